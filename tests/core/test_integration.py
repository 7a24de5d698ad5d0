"""The core pieces together: tokenizer -> Transformer -> train() -> generate()."""

import torch

from minirepro.core.generate import generate
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.tokenizer import CharTokenizer
from minirepro.core.train import TrainConfig, train

ALPHABET = "abcdef"
N = 4  # length of the string to copy


def test_transformer_learns_to_copy_with_train_and_generate(tmp_path):
    tok = CharTokenizer.from_text(ALPHABET, specials=["<sep>"])
    sep = tok.token_to_id("<sep>")
    letters = torch.tensor([tok.token_to_id(c) for c in ALPHABET])

    def sample(n: int, g: torch.Generator) -> torch.Tensor:
        s = letters[torch.randint(0, len(ALPHABET), (n, N), generator=g)]  # (n, N)
        return torch.cat([s, torch.full((n, 1), sep), s], dim=1)  # (n, 2N+1): s <sep> s

    def get_batch(step, g):
        seq = sample(64, g)
        y = seq[:, 1:].clone()
        y[:, : N - 1] = -100  # only the copy after <sep> is predictable
        return seq[:, :-1], y

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=16)
    )
    cfg = TrainConfig(
        steps=200, lr=5e-3, warmup_steps=20, batch_size=64, weight_decay=0.0, log_every=50
    )
    state = train(model, cfg, get_batch, out_dir=tmp_path)
    assert state.history[-1]["loss"] < 0.2 * state.history[0]["loss"]
    assert (tmp_path / "metrics.jsonl").exists()

    model.eval()
    test = sample(32, torch.Generator().manual_seed(123))
    out = generate(model, test[:, : N + 1], max_new_tokens=N)  # prompt: s <sep>
    copied = sum(o == row[N + 1 :].tolist() for o, row in zip(out, test))
    assert copied >= 28, f"copied {copied}/32 strings"
    assert tok.decode(out[0]) == tok.decode(test[0, N + 1 :].tolist())
