"""Packing: FFD budget, balanced ranks, and packed logprobs equal to unpacked ones (tiny model)."""

import random

import pytest
import torch

from areal_sys.packing import (
    balanced_partition,
    ffd_pack,
    pack_micro_batch,
    packing_stats,
    plan_microbatches,
    plan_minibatches,
    response_logprobs,
    to_padded,
)


def test_ffd_respects_budget_and_is_first_fit_decreasing() -> None:
    bins = ffd_pack([4, 8, 1, 4, 2, 1], 10)
    assert bins == [[1, 4], [0, 3, 2, 5]]  # 8+2 | 4+4+1+1
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    bins = ffd_pack(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128) + 2  # FFD's bound over the volume bound


def test_ffd_names_the_sequence_over_budget() -> None:
    with pytest.raises(ValueError, match="sequence q7/3 has 20 tokens"):
        ffd_pack([5, 20], 16, names=["q1/0", "q7/3"])
    with pytest.raises(ValueError, match="#1"):
        ffd_pack([5, 20], 16)


def test_balanced_partition() -> None:
    parts = balanced_partition([10, 9, 8, 7, 6, 5, 4, 3], 2)
    sums = [sum([10, 9, 8, 7, 6, 5, 4, 3][i] for i in p) for p in parts]
    assert sums == [26, 26] and [len(p) for p in parts] == [4, 4]
    assert all(parts_ for parts_ in balanced_partition([3, 1, 2], 3))
    with pytest.raises(ValueError):
        balanced_partition([1], 0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_plan_balances_ranks_with_equal_microbatch_counts(world_size: int) -> None:
    rng = random.Random(world_size)
    lengths = [rng.randint(20, 500) for _ in range(64)]
    plan = plan_microbatches(lengths, 1024, world_size)
    assert len(plan) == world_size
    assert len({len(bins) for bins in plan}) == 1
    assert sorted(i for bins in plan for mb in bins for i in mb) == list(range(64))
    assert all(sum(lengths[i] for i in mb) <= 1024 for bins in plan for mb in bins)
    stats = packing_stats(plan, lengths, 1024)
    assert stats.total_tokens == sum(lengths)
    assert stats.rank_imbalance < 0.05
    assert stats.padding_waste < 0.5


def test_plan_splits_or_pads_to_equal_counts() -> None:
    # rank 0 gets the two long sequences (2 micro-batches), rank 1 the short ones (1 bin) -> split
    plan = plan_microbatches([90, 90, 30, 30, 30], 100, 2)
    assert [len(bins) for bins in plan] == [2, 2] and all(mb for bins in plan for mb in bins)
    # one sequence per rank cannot be split: an empty micro-batch keeps the counts equal
    plan = plan_microbatches([90, 80, 70], 100, 2)
    assert [len(bins) for bins in plan] == [2, 2]
    assert sum(1 for bins in plan for mb in bins if not mb) == 1


def test_packing_stats_values() -> None:
    stats = packing_stats([[[0, 1]], [[2]]], [6, 2, 8], 10)
    assert stats.rank_tokens == [8, 8] and stats.rank_imbalance == 0.0
    assert stats.padding_waste == pytest.approx(1 - 16 / 20)
    assert stats.padded_layout_waste == pytest.approx(1 - 16 / (2 * 6 + 8))


def test_pack_micro_batch_layout() -> None:
    mb = pack_micro_batch([[5, 6], [7]], [[8, 9, 10], [11]], seq_indices=[4, 2])
    assert mb.input_ids.tolist() == [[5, 6, 8, 9, 10, 7, 11]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert mb.logit_index.tolist() == [1, 2, 3, 5]
    assert mb.target_ids.tolist() == [8, 9, 10, 11]
    padded = to_padded(torch.tensor([1.0, 2.0, 3.0, 4.0]), mb, fill=-1.0)
    assert padded.tolist() == [[1.0, 2.0, 3.0], [4.0, -1.0, -1.0]]
    assert (mb.seq_indices, mb.num_tokens, mb.max_resp_len) == ([4, 2], 7, 3)
    with pytest.raises(ValueError, match="empty prompt"):
        pack_micro_batch([[]], [[1]])


@pytest.fixture(scope="module", params=["sdpa", "packed_sdpa"])
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model under plain sdpa (block-diagonal mask) and the trainer's varlen attention."""
    from transformers import AutoModelForCausalLM

    from areal_sys.attention import register
    from areal_sys.models.tiny import save_random_tiny_model

    register()
    path = save_random_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=request.param
    )
    return model.eval()


@pytest.mark.integration
def test_packed_gradients_equal_unpacked(tiny_model) -> None:
    rng = random.Random(1)
    vocab = tiny_model.config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(1, 9))] for _ in range(4)]
    responses = [[rng.randrange(vocab) for _ in range(rng.randint(1, 15))] for _ in range(4)]
    params = [p for p in tiny_model.parameters() if p.requires_grad]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, params, allow_unused=True)
                if g is not None]

    mb = pack_micro_batch(prompts, responses)
    out = tiny_model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False,
                     logits_to_keep=mb.logit_index)
    packed = grads(response_logprobs(out.logits[0], mb.target_ids).sum())
    total = 0
    for p, r in zip(prompts, responses, strict=True):
        logits = tiny_model(input_ids=torch.tensor([p + r]), use_cache=False).logits[0]
        total = total + response_logprobs(logits[len(p) - 1 : -1], torch.tensor(r)).sum()
    unpacked = grads(total)
    assert len(packed) == len(unpacked)
    assert max(float((a - b).abs().max()) for a, b in zip(packed, unpacked, strict=True)) < 1e-4


@pytest.mark.integration
def test_packed_logprobs_equal_unpacked(tiny_model) -> None:
    rng = random.Random(0)
    vocab = tiny_model.config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(1, 12))] for _ in range(5)]
    responses = [[rng.randrange(vocab) for _ in range(rng.randint(1, 20))] for _ in range(5)]
    temperature = 0.7
    mb = pack_micro_batch(prompts, responses)
    with torch.no_grad():
        out = tiny_model(
            input_ids=mb.input_ids,
            position_ids=mb.position_ids,
            attention_mask=None,
            use_cache=False,
            logits_to_keep=mb.logit_index,
        )
        packed = response_logprobs(out.logits[0], mb.target_ids, temperature)
        unpacked = []
        for p, r in zip(prompts, responses, strict=True):
            logits = tiny_model(input_ids=torch.tensor([p + r]), use_cache=False).logits[0]
            logp = torch.log_softmax(logits[len(p) - 1 : -1] / temperature, dim=-1)
            unpacked.append(logp.gather(-1, torch.tensor(r).unsqueeze(-1)).squeeze(-1))
        unpacked_t = torch.cat(unpacked)
        assert (packed - unpacked_t).abs().max().item() < 1e-4

        # control: without restarting positions the sequences attend to each other and differ
        contiguous = torch.arange(mb.num_tokens).unsqueeze(0)
        out = tiny_model(input_ids=mb.input_ids, position_ids=contiguous, use_cache=False)
        leaky = response_logprobs(out.logits[0, mb.logit_index], mb.target_ids, temperature)
        assert (leaky - unpacked_t).abs().max().item() > 1e-2


def long_tail(rng: random.Random, n: int) -> list[int]:
    """Sequence lengths with a long tail (most short, a few near the budget)."""
    return [min(1000, 16 + int(rng.paretovariate(1.2) * 30)) for _ in range(n)]


@pytest.mark.parametrize("trial", range(40))
def test_plan_invariants_on_random_inputs(trial: int) -> None:
    """No sequence split or lost, budget respected, equal micro-batch counts per rank, and the
    heaviest rank exceeds the lightest by at most the longest sequence."""
    rng = random.Random(1000 + trial)
    world = rng.randint(1, 5)
    lengths = long_tail(rng, rng.randint(world, 120))
    budget = rng.choice([1000, 1500, 4096])
    plan = plan_microbatches(lengths, budget, world)
    placed = [i for bins in plan for mb in bins for i in mb]
    assert sorted(placed) == list(range(len(lengths)))  # each sequence exactly once, whole
    assert all(sum(lengths[i] for i in mb) <= budget for bins in plan for mb in bins)
    assert len({len(bins) for bins in plan}) == 1
    rank_tokens = packing_stats(plan, lengths, budget).rank_tokens
    assert max(rank_tokens) - min(rank_tokens) <= max(lengths)


def test_minibatches_can_keep_groups_whole() -> None:
    rng = random.Random(7)
    groups = [g for g in range(12) for _ in range(4)]
    lengths = [rng.randint(10, 90) for _ in groups]
    plans = plan_minibatches(lengths, 3, 256, 2, groups=groups)
    assert len(plans) == 3
    seen = []
    for plan in plans:
        members = {i for bins in plan for mb in bins for i in mb}
        for g in {groups[i] for i in members}:  # the whole group is in this minibatch
            assert all(i in members for i in range(48) if groups[i] == g)
        seen.extend(members)
    assert sorted(seen) == list(range(48))
