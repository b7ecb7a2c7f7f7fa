"""Where a LoRA input points, as Replicate users write it, and the https URL its file is downloaded from.

Accepted forms (`parse_lora_source`, cheap, no network):
- a local `.safetensors` path;
- `owner/repo` or `owner/repo/path/file.safetensors`: a Hugging Face Hub repository (the one `.safetensors` file
  it holds, or that file), and `https://huggingface.co/owner/repo[/blob|resolve/<revision>/path]`;
- `civitai.com/models/<id>[/name][?modelVersionId=<version>]` (with or without https://, `www.`): the model's
  newest version, or that version;
- any other https URL.

`download_url` turns a Hub or CivitAI source into the file's URL, asking the Hub's API (huggingface_hub's
endpoint, so `HF_ENDPOINT` moves it) or CivitAI's (`civitai_endpoint`) through `downloads.download`, with its
limits. A token goes only to the host it belongs to, as an Authorization header, never into a URL: the cache
key, logs, errors and metadata stay free of it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import InvalidInput
from .downloads import download, public_url

if TYPE_CHECKING:
    from ..config import LoraDownloads

HUB_HOST = "huggingface.co"
MAX_API_ANSWER_BYTES = 4 * 2**20
_PART = r"[A-Za-z0-9][\w.-]*"
_HUB_SHORT = re.compile(rf"^({_PART}/{_PART})(?:/((?:{_PART}/)*{_PART}\.safetensors))?$")
_CIVITAI = re.compile(r"^(?:https://)?(?:www\.)?civitai\.com/models/(\d+)(?:/[^?#]*)?(?:\?([^#]*))?$", re.I)


@dataclass(frozen=True)
class LoraSource:
    """A parsed LoRA input. `kind`: "file" (`path`), "url", "hub" (`repo`, `filename` or None for the repo's
    one file, `revision`) or "civitai" (`model_id`, `version` or None for the newest)."""

    kind: str
    text: str
    repo: str = ""
    filename: str | None = None
    revision: str = "main"
    model_id: str = ""
    version: str | None = None

    @property
    def shown(self) -> str:
        """How errors, logs and a video's metadata name it: a file by name, a URL without credentials or query,
        a CivitAI model with its version (the one query that is not a secret)."""
        if self.kind == "file":
            return Path(self.text).name
        if self.kind == "civitai":
            version = f"?modelVersionId={self.version}" if self.version else ""
            return f"civitai.com/models/{self.model_id}{version}"
        return public_url(self.text) if "://" in self.text else self.text


def parse_lora_source(name: str, text: str) -> LoraSource:
    """What LoRA input `name` points at; raises InvalidInput for a scheme other than https."""
    text = text.strip()
    if civitai := _CIVITAI.match(text):
        versions = parse_qs(civitai.group(2) or "").get("modelVersionId", [None])
        version = versions[0]
        if version is not None and not version.isdigit():
            raise InvalidInput(name, f"modelVersionId must be a number in {public_url(text)}")
        return LoraSource("civitai", text, model_id=civitai.group(1), version=version)
    lowered = text.lower()
    for prefix in (f"https://{HUB_HOST}/", f"{HUB_HOST}/"):
        if lowered.startswith(prefix):
            return _hub_url(name, text, text[len(prefix) :])
    if "://" in text:
        if not lowered.startswith("https://"):
            raise InvalidInput(name, f"only https URLs or local paths are accepted, got {public_url(text)!r}")
        return LoraSource("url", text)
    hub = _HUB_SHORT.match(text)
    # `folder/file.safetensors` is a path: a repository's name does not end in .safetensors.
    if hub and not Path(text).exists() and not hub.group(1).endswith(".safetensors"):
        return LoraSource("hub", text, repo=hub.group(1), filename=hub.group(2))
    return LoraSource("file", text)


def _hub_url(name: str, text: str, path: str) -> LoraSource:
    parts = [part for part in urlsplit(path).path.split("/") if part]
    if len(parts) == 2:
        return LoraSource("hub", text, repo="/".join(parts))
    if len(parts) >= 5 and parts[2] in ("blob", "resolve"):
        return LoraSource("hub", text, repo="/".join(parts[:2]), revision=parts[3], filename="/".join(parts[4:]))
    raise InvalidInput(
        name, f"expected https://{HUB_HOST}/owner/repo or .../owner/repo/blob/<revision>/file, got {public_url(text)}"
    )


def download_url(
    source: LoraSource, name: str, downloads: LoraDownloads, tokens: dict[str, str | None]
) -> tuple[str, dict[str, str]]:
    """The https URL of `source`'s file and the headers to send with it (the token of its host, if given).

    `tokens`: "hf" and "civitai" tokens, or None. Asks the Hub's or CivitAI's API where a source names no file.
    """
    if source.kind == "hub":
        from huggingface_hub import constants, hf_hub_url

        headers = _bearer(tokens.get("hf"))
        filename = source.filename or _hub_safetensors(source, name, downloads, headers, constants.ENDPOINT)
        return hf_hub_url(source.repo, filename, revision=source.revision), headers
    if source.kind == "civitai":
        endpoint = downloads.civitai_endpoint.rstrip("/")
        headers = _bearer(tokens.get("civitai"))
        version = source.version
        if version is None:
            model = fetch_json(f"{endpoint}/api/v1/models/{source.model_id}", name, downloads, headers)
            versions = model.get("modelVersions") or []
            if not versions or "id" not in versions[0]:
                raise InvalidInput(name, f"CivitAI model {source.model_id} lists no version to download")
            version = str(versions[0]["id"])
        return f"{endpoint}/api/download/models/{version}", headers
    return source.text, {}


def _hub_safetensors(source: LoraSource, name: str, downloads: LoraDownloads, headers, endpoint: str) -> str:
    """The one .safetensors file of a Hub repository (at its revision), or InvalidInput naming what is there."""
    api = f"{endpoint.rstrip('/')}/api/models/{source.repo}/revision/{quote(source.revision, safe='')}"
    files = [item.get("rfilename", "") for item in fetch_json(api, name, downloads, headers).get("siblings", [])]
    found = [file for file in files if file.endswith(".safetensors")]
    if len(found) != 1:
        listed = ", ".join(found[:10]) if found else "none"
        raise InvalidInput(
            name,
            f"{source.repo} holds {len(found)} .safetensors files ({listed}); name one: {source.repo}/<file>",
        )
    return found[0]


def fetch_json(url: str, name: str, downloads: LoraDownloads, headers: dict[str, str]) -> dict:
    """An API's JSON answer, fetched with the download rules (https, public hosts, time and size limits)."""
    downloads.cache_dir.mkdir(parents=True, exist_ok=True)
    target = downloads.cache_dir / f".api-{secrets.token_hex(6)}.partial"
    try:
        download(url, name, target, MAX_API_ANSWER_BYTES, downloads.allow_private, headers)
        answer = json.loads(target.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(name, f"{public_url(url)} did not answer with JSON") from None
    finally:
        target.unlink(missing_ok=True)
    if not isinstance(answer, dict):
        raise InvalidInput(name, f"{public_url(url)} did not answer with a JSON object")
    return answer


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
