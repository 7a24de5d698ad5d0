"""Incremental detokenisation and stop strings: deltas add up to the full text, a stop
string and what follows it never reach the client, a possible stop prefix is held back."""

import pytest

from minirepro.papers.serve import EngineConfig, LLMEngine, SamplingParams
from minirepro.papers.serve.sampling import Detokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class CharTokenizer:
    """Token i -> one letter; ids >= 60 are multi-byte pieces: 60+j is byte j of 'é' (2 bytes),
    so a lone first byte decodes to U+FFFD like a byte-level BPE tokenizer's would."""

    ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?0123"

    def decode(self, ids, skip_special_tokens=True):
        out = bytearray()
        for i in ids:
            if i >= 60:
                out += "é".encode()[i - 60 : i - 59]
            else:
                out += self.ALPHABET[i].encode()
        return out.decode("utf-8", errors="replace")


def _stream(detok, ids):
    deltas = []
    for t in ids:
        detok.add([t])
        deltas.append(detok.delta(final=detok.stopped))
        if detok.stopped:
            break
    return deltas


def test_deltas_add_up_and_wait_for_whole_characters():
    tok = CharTokenizer()
    ids = [7, 4, 11, 60, 61, 11, 14]  # "hel" + "é" (two tokens) + "lo"
    detok = Detokenizer(tok, [])
    deltas = _stream(detok, ids)
    assert "".join(deltas) == tok.decode(ids) == "helélo"
    assert deltas[3] == "" and deltas[4] == "é"  # half a character is not emitted


def test_stop_string_cut_and_held_back():
    tok = CharTokenizer()
    text_ids = [0, 1, 2, 3, 4, 5, 6]  # "abcdefg"
    detok = Detokenizer(tok, ["def"])
    deltas = _stream(detok, text_ids)
    assert "".join(deltas) == "abc" and detok.stopped
    assert deltas[3] == ""  # "d" might start "def": held back
    # a held-back prefix that turns out not to be a stop string is released
    detok = Detokenizer(tok, ["dex"])
    deltas = _stream(detok, text_ids)
    assert deltas[3] == "" and deltas[4] == "" and deltas[5] == "def"
    assert "".join(deltas) + detok.delta(final=True) == "abcdefg" and not detok.stopped


class LetterTokenizer:
    """Each of the 64 ids is one character (so text index == token index)."""

    ALPHABET = CharTokenizer.ALPHABET + "4567"

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.ALPHABET[i] for i in ids)


def test_engine_stop_strings(tiny_model):
    tok = LetterTokenizer()
    engine = LLMEngine(tiny_model, tok)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=3)
    full_ids = engine.generate([prompt], params)[0]
    full_text = tok.decode(full_ids)
    assert len(full_text) == 30
    stop = full_text[10:13]
    cut = full_text.index(stop)
    for cfg in ({}, {"async_scheduling": True, "nano_batches": 2}):
        engine = LLMEngine(tiny_model, tok, EngineConfig(**cfg))
        stopping = SamplingParams(max_tokens=30, temperature=1.0, seed=3, stop=[stop, "never"])
        engine.add_request("r", prompt, stopping)
        engine.add_request("free", prompt, params)
        text, ids, reasons = {"r": "", "free": ""}, {"r": [], "free": []}, {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                text[o.request_id] += o.new_text
                ids[o.request_id] += o.new_token_ids
                if o.finished:
                    reasons[o.request_id] = o.finish_reason
        assert text["r"] == full_text[:cut] and reasons["r"] == "stop"
        # generation ends with the token that completed the stop string
        assert ids["r"] == full_ids[: cut + len(stop)]
        assert text["free"] == full_text and reasons["free"] == "length"
