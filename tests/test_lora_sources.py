"""LoRA references as Replicate users write them: Hub repositories and URLs, CivitAI models, against local https
hosts that serve the Hub's and CivitAI's URL layouts; tokens reach only their own host and nothing else."""

from __future__ import annotations

import json
import logging

import pytest
from helpers.hosts import HostileRoutes
from helpers.models import peft_lora
from safetensors.torch import save

from framepack.config import LoraDownloads
from framepack.core.lora_sources import parse_lora_source
from framepack.core.request import build_request, check_lora_source
from framepack.errors import InvalidInput
from framepack.models.lora import lora_layers

HF_TOKEN, CIVITAI_TOKEN = "hf_SECRET_hub_token", "civitai-SECRET-key"


@pytest.mark.parametrize(
    ("text", "kind", "fields"),
    [
        ("owner/style-lora", "hub", {"repo": "owner/style-lora", "filename": None, "revision": "main"}),
        (
            "owner/repo/sub/dir/style.safetensors",
            "hub",
            {"repo": "owner/repo", "filename": "sub/dir/style.safetensors"},
        ),
        ("https://huggingface.co/owner/repo", "hub", {"repo": "owner/repo", "filename": None}),
        (
            "https://huggingface.co/owner/repo/blob/v2/style.safetensors",
            "hub",
            {"repo": "owner/repo", "filename": "style.safetensors", "revision": "v2"},
        ),
        ("huggingface.co/owner/repo/resolve/main/a/b.safetensors", "hub", {"filename": "a/b.safetensors"}),
        ("civitai.com/models/12345", "civitai", {"model_id": "12345", "version": None}),
        ("https://www.civitai.com/models/12345/cute-style?modelVersionId=678", "civitai", {"version": "678"}),
        ("https://example.com/style.safetensors?sig=abc", "url", {}),
        ("loras/style.safetensors", "file", {}),  # two parts ending in .safetensors: a path, not a repository
        ("/srv/loras/style.safetensors", "file", {}),
    ],
)
def test_every_form_is_recognised(text, kind, fields):
    source = parse_lora_source("lora_weights", text)
    assert source.kind == kind and all(getattr(source, key) == value for key, value in fields.items())


def test_what_is_stored_and_shown_keeps_the_reference_but_no_secret():
    shown = {
        "https://www.civitai.com/models/1/cute?modelVersionId=678&token=x": "civitai.com/models/1?modelVersionId=678",
        "https://example.com/style.safetensors?sig=abc": "https://example.com/style.safetensors",
        "owner/repo/style.safetensors": "owner/repo/style.safetensors",
        "/srv/loras/style.safetensors": "style.safetensors",
    }
    assert {text: parse_lora_source("lora_weights", text).shown for text in shown} == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://huggingface.co/owner/repo", "only https URLs or local paths are accepted"),
        ("https://huggingface.co/owner", "expected https://huggingface.co/owner/repo or"),
        ("civitai.com/models/1?modelVersionId=abc", "modelVersionId must be a number"),
    ],
)
def test_malformed_references_are_refused_naming_the_input(text, message):
    with pytest.raises(InvalidInput, match=f"Invalid input 'lora_weights': {message}"):
        check_lora_source("lora_weights", text)


def test_a_local_file_outside_the_lora_folder_suggests_the_remote_forms(tmp_path):
    with pytest.raises(InvalidInput, match="must be in the server's LoRA folder; give a Hugging Face repository"):
        check_lora_source("lora_weights", str(tmp_path / "x.safetensors"), (tmp_path / "loras",))


@pytest.fixture
def hub_and_civitai(hostile_hosts, monkeypatch, tmp_path):
    """The hostile https host as the Hub (HF_ENDPOINT) and as CivitAI (civitai_endpoint); its CA trusted."""
    from huggingface_hub import constants

    endpoint = f"https://{hostile_hosts.secure}"
    monkeypatch.setenv("SSL_CERT_FILE", str(hostile_hosts.ca_file))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    HostileRoutes.authorizations.clear()
    downloads = LoraDownloads(tmp_path / "cache", allow_private=True, civitai_endpoint=endpoint)
    yield downloads
    HostileRoutes.files.clear()


def _serve_json(path: str, value: dict) -> None:
    HostileRoutes.files[path] = json.dumps(value).encode()


def test_a_hub_repository_and_its_one_file_with_the_token_sent_to_the_hub_only(tiny_models, hub_and_civitai, caplog):
    model = tiny_models.transformers["original"]
    files = [{"rfilename": "README.md"}, {"rfilename": "style.safetensors"}]
    _serve_json("/api/models/owner/style-lora/revision/main", {"siblings": files})
    HostileRoutes.files["/owner/style-lora/resolve/main/style.safetensors"] = save(peft_lora(model))
    tokens = {"hf": HF_TOKEN, "civitai": CIVITAI_TOKEN}
    with caplog.at_level(logging.DEBUG):
        layers, file = lora_layers("owner/style-lora", "lora_weights", model, hub_and_civitai, tokens)
    assert len(layers) == 2 and file.is_file() and file.parent == hub_and_civitai.cache_dir
    assert HostileRoutes.authorizations == [
        ("/api/models/owner/style-lora/revision/main", f"Bearer {HF_TOKEN}"),
        ("/owner/style-lora/resolve/main/style.safetensors", f"Bearer {HF_TOKEN}"),
    ]
    assert HF_TOKEN not in caplog.text and CIVITAI_TOKEN not in caplog.text
    # The file named in the reference, at a revision, through a Hub URL: the cached file, no request needed.
    HostileRoutes.authorizations.clear()
    HostileRoutes.files["/owner/style-lora/resolve/v2/style.safetensors"] = save(peft_lora(model, seed=5))
    url = "https://huggingface.co/owner/style-lora/blob/v2/style.safetensors"
    assert len(lora_layers(url, "lora_weights", model, hub_and_civitai)[0]) == 2
    assert HostileRoutes.authorizations == [("/owner/style-lora/resolve/v2/style.safetensors", None)]


def test_a_repository_with_several_files_asks_which(tiny_models, hub_and_civitai):
    _serve_json("/api/models/owner/many/revision/main", {"siblings": [{"rfilename": f"{n}.safetensors"} for n in "ab"]})
    with pytest.raises(InvalidInput, match=r"owner/many holds 2 .safetensors files \(a.safetensors, b.safetensors\)"):
        lora_layers("owner/many", "extra_lora", tiny_models.transformers["original"], hub_and_civitai)


def test_a_civitai_model_downloads_its_newest_version_with_the_key_sent_to_civitai_only(
    tiny_models, hub_and_civitai, hostile_hosts
):
    model = tiny_models.transformers["original"]
    _serve_json("/api/v1/models/12345", {"modelVersions": [{"id": 678}, {"id": 600}]})
    # CivitAI's download redirects to a storage host (here: localhost, another name): the key stays behind.
    port = hostile_hosts.secure.split(":")[1]
    HostileRoutes.redirects["/api/download/models/678"] = f"https://localhost:{port}/storage/style.safetensors"
    HostileRoutes.files["/storage/style.safetensors"] = save(peft_lora(model))
    tokens = {"hf": HF_TOKEN, "civitai": CIVITAI_TOKEN}
    try:
        layers, _ = lora_layers("civitai.com/models/12345", "lora_weights", model, hub_and_civitai, tokens)
    finally:
        HostileRoutes.redirects.clear()
    assert len(layers) == 2
    assert HostileRoutes.authorizations == [
        ("/api/v1/models/12345", f"Bearer {CIVITAI_TOKEN}"),
        ("/api/download/models/678", f"Bearer {CIVITAI_TOKEN}"),
        ("/storage/style.safetensors", None),
    ]
    # A version named: no API call, and (another URL) another cached file. owner/repo/file.safetensors as well.
    HostileRoutes.authorizations.clear()
    HostileRoutes.files["/api/download/models/600"] = save(peft_lora(model, seed=4))
    HostileRoutes.files["/owner/repo/resolve/main/sub/style.safetensors"] = save(peft_lora(model, seed=6))
    for reference in ("https://civitai.com/models/12345/style?modelVersionId=600", "owner/repo/sub/style.safetensors"):
        assert len(lora_layers(reference, "extra_lora", model, hub_and_civitai, tokens)[0]) == 2
    assert [path for path, _ in HostileRoutes.authorizations] == [
        "/api/download/models/600",
        "/owner/repo/resolve/main/sub/style.safetensors",
    ]


def test_tokens_are_secrets_of_the_request_and_never_stored():
    from helpers.paths import START_IMAGE

    inputs = {"input_image": START_IMAGE, "prompt": "x", "lora_weights": "owner/repo", "hf_api_token": HF_TOKEN}
    request = build_request({**inputs, "civitai_api_token": CIVITAI_TOKEN})
    assert request.lora_tokens == {"hf": HF_TOKEN, "civitai": CIVITAI_TOKEN}
    stored = json.dumps(request.to_json_dict())
    assert HF_TOKEN not in stored and CIVITAI_TOKEN not in stored and '"lora_weights": "owner/repo"' in stored
    assert HF_TOKEN not in repr(request) and HF_TOKEN not in str(request.model_dump())
