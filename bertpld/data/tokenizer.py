"""The BERT WordPiece tokenizer: train one with `tokenizers`, or check and reuse a given one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from bertpld.errors import BertpldError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, alphabets: Iterable[str] | None = None
) -> Tokenizer:
    """A BERT-style uncased WordPiece trained on `texts`; [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.

    `alphabets`: `alphabet(t)` of every text, when already computed (prepare's worker processes
    do it while they clean). Training itself runs in `tokenizers` (Rust): its word counting uses
    tokenizers' threads where TOKENIZERS_PARALLELISM allows, its merge loop is sequential; the
    result is the same either way.

    Deterministic: tokenizers' trainer gives the "##c" continuation symbols ids in hash-map order,
    and those ids break ties between equally frequent merges, so two runs on the same text can
    learn different vocabularies (huggingface/tokenizers#1794). Registering every "##c" up front,
    after the real special tokens and in sorted order, fixes their ids; the tokenizer is then
    rebuilt from the learned vocabulary with only the five real special tokens.
    """
    texts = list(texts)
    tok = _bert_tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    chars: set[str] = set()
    for a in map(alphabet, texts) if alphabets is None else alphabets:
        chars.update(a)
    pinned = [f"##{c}" for c in sorted(chars)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[*SPECIAL_TOKENS, *pinned],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    vocab = tok.get_vocab(with_added_tokens=True)
    final = _bert_tokenizer(
        WordPiece(
            vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100
        )
    )
    final.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = final.token_to_id("[CLS]"), final.token_to_id("[SEP]")
    # So that users of tokenizer.json (fine-tuning, export) get BERT's [CLS] A [SEP] B [SEP].
    final.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return final


def alphabet(text: str) -> str:
    """The distinct characters of `text` after the tokenizer's normalisation, whitespace excluded
    (the continuation symbols training pins; see `train_tokenizer`)."""
    return "".join(sorted(set(_NORMALIZER.normalize_str(text)) - _WHITESPACE))


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )


_NORMALIZER = _normalizer()
_WHITESPACE = frozenset(" \t\n\r")


def _bert_tokenizer(model: WordPiece) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_tokenizer(path: str | Path, field: str = "prepare.tokenizer") -> Tokenizer:
    """Load a tokenizer.json and check it has BERT's special tokens with [PAD] = 0.

    `field` names, in error messages, where the path came from.
    """
    path = Path(path)
    if not path.is_file():
        raise BertpldError(f"{field}: no such file: {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for malformed files
        raise BertpldError(f"{field}: {path} is not a tokenizers tokenizer.json ({e})") from None
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise BertpldError(f"{field}: {path} lacks the special tokens {', '.join(missing)}")
    if tok.token_to_id("[PAD]") != 0:
        raise BertpldError(f"{field}: {path} has [PAD] = {tok.token_to_id('[PAD]')}, expected 0")
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: int(tok.token_to_id(t)) for t in SPECIAL_TOKENS}
