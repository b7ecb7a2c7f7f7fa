"""URL inputs against hostile hosts: local https servers (a test CA) that stall, trickle, redirect or lie.

Everything runs on 127.0.0.1, so the tests allow private hosts except where that rule is the subject.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time

import pytest
from helpers.hosts import HostileRoutes
from helpers.models import peft_lora
from safetensors.torch import save

from framepack.config import LoraDownloads
from framepack.core import downloads
from framepack.core.downloads import download, evict_least_recently_used, public_url, refused_address
from framepack.errors import InvalidInput
from framepack.models.lora import lora_layers


@pytest.fixture
def hosts(hostile_hosts, monkeypatch):
    """The hostile https host (trusted through its test CA) and the plain-HTTP one, as host:port."""
    monkeypatch.setenv("SSL_CERT_FILE", str(hostile_hosts.ca_file))
    return hostile_hosts.secure, hostile_hosts.plain


@pytest.fixture
def fast_rate_window(monkeypatch):
    """A 1-second rate window instead of 10, so a stalled host is dropped within the test's patience."""
    monkeypatch.setattr(downloads, "RATE_WINDOW_S", 1.0)


def _settings(tmp_path, **overrides) -> LoraDownloads:
    return LoraDownloads(**{"cache_dir": tmp_path / "cache", "allow_private": True, **overrides})


def _lora_bytes(model, seed: int = 2) -> bytes:
    return save(peft_lora(model, seed=seed))


def _cached_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []


def test_a_valid_lora_is_downloaded_once_and_kept(tiny_models, hosts, tmp_path):
    secure, _ = hosts
    model = tiny_models.transformers["original"]
    HostileRoutes.files["/style.safetensors"] = _lora_bytes(model)
    url = f"https://{secure}/style.safetensors?token=SECRET"
    first, _ = lora_layers(url, "lora_weights", model, _settings(tmp_path))
    del HostileRoutes.files["/style.safetensors"]  # a second use must not need the host
    again, _ = lora_layers(url, "lora_weights", model, _settings(tmp_path))
    assert [layer.module for layer in again] == [layer.module for layer in first] and len(first) == 2
    assert len(_cached_files(tmp_path)) == 1 and not any("partial" in n for n in _cached_files(tmp_path))


def test_private_hosts_are_refused_by_default(tiny_models, hosts, tmp_path):
    secure, _ = hosts
    with pytest.raises(InvalidInput, match=r"resolves to a loopback address; URL inputs must be public hosts"):
        lora_layers(
            f"https://{secure}/x.safetensors",
            "lora_weights",
            tiny_models.transformers["original"],
            _settings(tmp_path, allow_private=False),
        )
    assert _cached_files(tmp_path) == []


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # shared address space; a cloud's metadata service
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "fc00::1",
        "224.0.0.1",
        "0.0.0.0",
    ],
)
def test_local_private_and_metadata_addresses_are_refused(address):
    assert refused_address(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert refused_address(address) is None


def test_a_stalled_host_is_dropped_and_leaves_nothing(hosts, tmp_path, fast_rate_window):
    secure, _ = hosts
    target = tmp_path / "part"
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"'lora_weights': https://127.0.0.1:\d+/stall sent less than .*stalled"):
        download(f"https://{secure}/stall", "lora_weights", target, 10**6, allow_private=True)
    assert time.monotonic() - started < 5 and not target.exists()


def test_a_trickling_host_is_dropped(hosts, tmp_path, fast_rate_window):
    secure, _ = hosts
    with pytest.raises(InvalidInput, match="stalled or too slow"):
        download(f"https://{secure}/trickle", "extra_lora", tmp_path / "part", 10**6, allow_private=True)
    assert not (tmp_path / "part").exists()


class Cancelled(BaseException):
    """What a cancellation raises in the predicting thread (Cog's CancelationException is a BaseException)."""


def test_cancelling_a_stalled_download_takes_effect_within_a_second(hosts, tmp_path):
    secure, _ = hosts
    target, outcome = tmp_path / "part", {}

    def predict() -> None:
        try:
            download(f"https://{secure}/stall", "lora_weights", target, 10**6, allow_private=True)
        except Cancelled:
            outcome["cancelled_at"] = time.monotonic()

    thread = threading.Thread(target=predict)
    thread.start()
    time.sleep(2.0)  # well into the stall, with the default 10-second rate window not yet run out
    cancelled = time.monotonic()
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Cancelled))
    thread.join(5)
    assert not thread.is_alive() and outcome["cancelled_at"] - cancelled < 1.0
    assert not target.exists()


def test_a_redirect_to_plain_http_is_refused(hosts, tmp_path):
    secure, plain = hosts
    url = f"https://{secure}/redirect-to/http__{plain}/x.safetensors"
    with pytest.raises(InvalidInput, match=rf"led to http://{plain}/x.safetensors: only https URLs are accepted"):
        download(url, "lora_weights", tmp_path / "part", 10**6, allow_private=True)


def test_a_redirect_to_https_is_followed(tiny_models, hosts, tmp_path):
    secure, _ = hosts
    model = tiny_models.transformers["original"]
    HostileRoutes.files["/real.safetensors"] = _lora_bytes(model)
    url = f"https://{secure}/redirect-to/https__{secure}/real.safetensors"
    assert len(lora_layers(url, "lora_weights", model, _settings(tmp_path))[0]) == 2


def test_closed_and_plain_http_ports_give_the_same_error(hosts, tmp_path):
    _, plain = hosts
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once the socket closes
    messages = []
    for host in (closed, plain):
        with pytest.raises(InvalidInput) as error:
            download(f"https://{host}/x.safetensors", "lora_weights", tmp_path / "part", 10**6, allow_private=True)
        messages.append(str(error.value).replace(host, "HOST"))
    assert (
        messages[0]
        == messages[1]
        == (
            "Invalid input 'lora_weights': could not download https://HOST/x.safetensors: no https answer from the host"
        )
    )


def test_oversized_and_invalid_files_are_not_kept(tiny_models, hosts, tmp_path):
    secure, _ = hosts
    model = tiny_models.transformers["original"]
    HostileRoutes.files["/big.safetensors"] = b"x" * 5000
    HostileRoutes.files["/garbage.safetensors"] = b"\x00" * 64
    HostileRoutes.files["/foreign.safetensors"] = save(
        {"unet.x.lora_A.weight": peft_lora(model)[next(iter(peft_lora(model)))]}
    )
    with pytest.raises(InvalidInput, match="is 5000 bytes, more than the 1000 allowed"):
        lora_layers(f"https://{secure}/big.safetensors", "lora_weights", model, _settings(tmp_path, max_bytes=1000))
    with pytest.raises(InvalidInput, match=r"'extra_lora': https://127.0.0.1:\d+/garbage.safetensors is not a valid"):
        lora_layers(f"https://{secure}/garbage.safetensors", "extra_lora", model, _settings(tmp_path))
    with pytest.raises(InvalidInput, match="1 of 1 keys match no transformer layer"):
        lora_layers(f"https://{secure}/foreign.safetensors", "extra_lora", model, _settings(tmp_path))
    assert _cached_files(tmp_path) == []


def test_secrets_in_urls_are_never_shown(hosts, tmp_path, caplog):
    secure, _ = hosts
    url = f"https://user:SECRET@{secure}/missing.safetensors?token=SECRET#SECRET"
    assert public_url(url) == f"https://{secure}/missing.safetensors"
    with pytest.raises(InvalidInput) as error:
        download(url, "lora_weights", tmp_path / "part", 10**6, allow_private=True)
    assert "HTTP 404" in str(error.value) and "SECRET" not in str(error.value)


def test_the_cache_keeps_the_most_recently_used_files_within_its_limit(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    for age, name in enumerate(("old", "used", "new")):
        path = folder / f"{name}.safetensors"
        path.write_bytes(b"x" * 100)
        stamp = time.time() - 100 + age
        os.utime(path, (stamp, stamp))
    removed = evict_least_recently_used(folder, 200, keep=folder / "new.safetensors")
    assert [p.name for p in removed] == ["old.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == ["new.safetensors", "used.safetensors"]
