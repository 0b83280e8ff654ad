"""OFA's English tokenizer: GPT-2 byte-level BPE in BART's id order, plus OFA's added tokens.

The id order is fairseq's: `Dictionary()` adds <s>, <pad>, </s>, <unk> first (ids 0-3,
OFA fairseq/fairseq/data/dictionary.py:34-37), then utils/BPE/dict.txt (50260 GPT-2 token ids, 4-50263),
then OFA's task adds <mask> (50264), <code_0>...<code_8191> and <bin_0>...<bin_999>, in that order
(OFA tasks/ofa_task.py:99-107): 50265 + 8192 + 1000 = 59457 ids, the English models' embedding rows and
ModelScope's OFAConfig default vocab_size (configuration_ofa.py `vocab_size=59457`). BART's `vocab.json`
already maps every BPE string to that fairseq id (<mask> included); ModelScope's preprocessor then adds
the code and bin tokens after it (preprocessors/ofa/base.py:49-50), as `load_tokenizer` does here.

Loaded with transformers' own class (`BartTokenizer`, tokenizers-backed) from `vocab.json` + `merges.txt`
in a folder; nothing is downloaded. `fairseq_bpe_to_hf` writes those two files from the original release's
utils/BPE folder (`encoder.json`, `vocab.bpe`, `dict.txt`), for checkpoints that come as a fairseq `.pt`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mue_bench.errors import SpecError

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # fairseq Dictionary's first four symbols, see above
SPECIALS = {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": UNK}
CODE_TOKENS = 8192  # OFA tasks/ofa_task.py:58 code_dict_size
BIN_TOKENS = 1000  # OFA tasks/ofa_task.py:67 num_bins
ENGLISH_VOCAB = 59457
HF_FILES = ("vocab.json", "merges.txt")
FAIRSEQ_FILES = ("encoder.json", "vocab.bpe", "dict.txt")


def added_tokens() -> list[str]:
    """OFA's added tokens in id order: image codes, then location bins."""
    return [f"<code_{i}>" for i in range(CODE_TOKENS)] + [f"<bin_{i}>" for i in range(BIN_TOKENS)]


def _read_vocab(folder: Path) -> dict[str, int]:
    path = folder / "vocab.json"
    if not path.is_file():
        raise SpecError(f"tokenizer file not found: {path} (OFA's tokenizer needs vocab.json and merges.txt)")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise SpecError(f"{path}: not a BPE vocabulary (a JSON object of token -> id)")
    return vocab


def vocab_size(folder: Path) -> int:
    """How many ids the tokenizer in `folder` has once OFA's added tokens are in (without building it)."""
    vocab = _read_vocab(Path(folder))
    return len(vocab) + sum(1 for t in added_tokens() if t not in vocab)


def load_tokenizer(folder: Path):
    """transformers' BART tokenizer from `folder`'s vocab.json + merges.txt, with OFA's added tokens, its
    special ids checked. Encode with `add_special_tokens=False`: OFA adds <s> and </s> itself."""
    from transformers import BartTokenizer

    folder = Path(folder)
    vocab = _read_vocab(folder)
    merges = folder / "merges.txt"
    if not merges.is_file():
        raise SpecError(f"tokenizer file not found: {merges} (OFA's tokenizer needs vocab.json and merges.txt)")
    for token, want in SPECIALS.items():
        if vocab.get(token) != want:
            raise SpecError(f"{folder / 'vocab.json'}: {token} has id {vocab.get(token)}, OFA's is {want}")
    try:
        tok = BartTokenizer(vocab=str(folder / "vocab.json"), merges=str(merges))
    except Exception as e:  # the tokenizers library's own errors: a malformed merges file
        raise SpecError(f"{merges}: not a BPE merges file ({str(e).splitlines()[0]})") from None
    tok.add_tokens([t for t in added_tokens() if t not in vocab])
    base = len(vocab)
    first_code, first_bin = tok.convert_tokens_to_ids(["<code_0>", "<bin_0>"])
    if vocab.get("<code_0>", first_code) != first_code or first_bin != first_code + CODE_TOKENS:
        raise SpecError(f"{folder / 'vocab.json'}: OFA's added tokens do not follow its {base} entries in order")
    return tok


def fairseq_bpe_to_hf(bpe_dir: Path, out: Path) -> None:
    """Write vocab.json + merges.txt from OFA's utils/BPE (GPT-2's encoder.json and vocab.bpe, and fairseq's
    dict.txt, whose line i holds the GPT-2 id that gets fairseq id 4 + i). <mask> takes the next id
    (OFA tasks/ofa_task.py:99)."""
    bpe_dir, out = Path(bpe_dir), Path(out)
    for name in FAIRSEQ_FILES:
        if not (bpe_dir / name).is_file():
            raise SpecError(f"tokenizer file not found: {bpe_dir / name}")
    try:
        encoder = json.loads((bpe_dir / "encoder.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{bpe_dir / 'encoder.json'}: not valid JSON ({str(e).splitlines()[0]})") from None
    by_gpt2_id = {str(i): token for token, i in encoder.items()}
    vocab = dict(SPECIALS)
    for n, line in enumerate((bpe_dir / "dict.txt").read_text(encoding="utf-8").splitlines(), 1):
        symbol = line.split(" ")[0]
        if symbol.isdigit() and symbol not in by_gpt2_id:
            raise SpecError(f"{bpe_dir / 'dict.txt'}: line {n} names GPT-2 id {symbol}, not in encoder.json")
        # the last lines are fairseq's padding symbols (madeupword0000...): kept as themselves, never produced
        vocab[by_gpt2_id.get(symbol, symbol)] = len(vocab)
    vocab["<mask>"] = len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_bytes((bpe_dir / "vocab.bpe").read_bytes())


def tokenizer_files(folder: Path) -> str | None:
    """'hf' or 'fairseq' for the kind of tokenizer files `folder` holds, None for neither."""
    folder = Path(folder)
    if all((folder / n).is_file() for n in HF_FILES):
        return "hf"
    if all((folder / n).is_file() for n in FAIRSEQ_FILES):
        return "fairseq"
    return None
