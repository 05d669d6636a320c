"""The tiny model builder: cache keying and reuse, atomic writes, determinism, EOS stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from areal_sys.data.synthetic import make_problems
from areal_sys.models import tiny
from areal_sys.models.tiny import ensure_tiny_model, sampled_pass_rate, tiny_model_key

pytestmark = pytest.mark.integration  # builds and trains tiny models: out of `make test-fast`

STEPS = 4  # enough to exercise the supervised phase, far too few to learn the task


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(
        seed=0, sft_steps=STEPS, cache_dir=tmp_path_factory.mktemp("cache"), progress=False
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    (f,) = path.glob("*.safetensors")
    return load_file(f)


def test_build_writes_a_complete_model_and_no_temporary_directory(built: Path) -> None:
    assert built.name == f"tiny-qwen2-{tiny_model_key(0, STEPS)}"
    assert (built / "config.json").is_file() and (built / "tokenizer.json").is_file()
    assert [p.name for p in built.parent.iterdir()] == [built.name]


def test_second_call_reuses_the_cached_directory(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached model must not be rebuilt")

    monkeypatch.setattr(tiny, "_train_sft", no_training)
    before = _weights(built)
    again = ensure_tiny_model(seed=0, sft_steps=STEPS, cache_dir=built.parent, progress=False)
    assert again == built
    assert all(torch.equal(before[k], v) for k, v in _weights(again).items())
    monkeypatch.setenv(tiny.CACHE_ENV, str(built.parent))
    assert ensure_tiny_model(seed=0, sft_steps=STEPS, progress=False) == built


def test_cache_key_separates_seed_steps_and_settings() -> None:
    keys = {
        tiny_model_key(0, STEPS),
        tiny_model_key(1, STEPS),
        tiny_model_key(0, STEPS + 1),
        tiny_model_key(0, STEPS, tiny.SFTSettings(lr=1e-4)),
    }
    assert len(keys) == 4
    assert tiny_model_key(0, STEPS) == tiny_model_key(0, STEPS, tiny.SFTSettings())


def test_build_is_deterministic_in_the_seed(built: Path, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    other = ensure_tiny_model(seed=0, sft_steps=STEPS, cache_dir=tmp_path, progress=False)
    # progress=False: no bar at all, transformers' "Writing model shards" included (a run's
    # console must hold only its own lines), and transformers' setting is left as it was
    assert capfd.readouterr().err == "" and hf_logging.is_progress_bar_enabled()
    a, b = _weights(built), _weights(other)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = tiny.save_random_tiny_model(tmp_path / "random", seed=0)
    assert not all(torch.equal(a[k], v) for k, v in _weights(init).items())  # SFT moved it


def test_a_crash_during_the_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(tiny, "_train_sft", crash)
    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_tiny_model(seed=0, sft_steps=STEPS, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_transformers_generation_stops_at_eos(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id == tok.eos_token_id
    prompts = [p["prompt"] for p in make_problems(32, seed=0, split="eval")]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=40)
    responses = out[:, enc["input_ids"].shape[1] :].tolist()
    with_eos = [r for r in responses if tok.eos_token_id in r]
    assert with_eos  # a barely trained model still samples EOS now and then
    for r in with_eos:
        tail = r[r.index(tok.eos_token_id) + 1 :]
        assert set(tail) <= {tok.pad_token_id}  # nothing is generated after EOS


def test_sampled_pass_rate_counts_one_sample_per_problem(built: Path) -> None:
    problems = make_problems(8, seed=0, split="eval")
    rate = sampled_pass_rate(built, problems, max_new_tokens=20, seed=0)
    assert rate * len(problems) == round(rate * len(problems))  # k correct of 8 samples
    assert rate == sampled_pass_rate(built, problems, max_new_tokens=20, seed=0)  # seeded
    unreachable = [{**p, "answer": "-1"} for p in problems]  # answers are 0..99
    assert sampled_pass_rate(built, unreachable, max_new_tokens=20, seed=0) == 0.0
