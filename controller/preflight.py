"""Checks before a run starts: everything a user can get wrong, found before Ray starts and before
anything is written.

run_dir (an earlier run is never written into without --resume or --overwrite), the resume
checkpoint, both datasets (rows, graders), the model directory and its tokenizer, and every
prompt's length against the engine's room. Each problem is a `UserError` of one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from areal_sys.config import ExperimentConfig

# What a run writes into run_dir: their presence means run_dir holds an earlier run.
RUN_OUTPUTS = ("config.yaml", "results.json", "metrics.jsonl", "staleness.jsonl",
               "filtered.jsonl", "timeline.jsonl", "eval.jsonl", "events.jsonl", "checkpoints",
               "tensorboard", "wandb", "report", "logs")


class UserError(Exception):
    """Any input problem the user must fix; printed as one line, exit code 2."""


def load_datasets(cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """Read (and so validate) both datasets before anything expensive starts.

    `data.task` and every row's `task` must name a registered grader: the built-ins and
    `reward.graders`, or, with `reward.url`, the graders that server's `/health` lists.
    """
    from areal_sys.data.loading import DataError, load_rows

    d = cfg.data
    graders = remote_graders(cfg) if cfg.reward.url else set(cfg.reward.grader_names())
    if d.task not in graders:
        raise UserError(f"data.task: {d.task!r} is not a grader of {cfg.reward.url}; it has "
                        f"{', '.join(sorted(graders))}")
    rows = {}
    for split, source, size in (("train", d.train, d.synthetic_train_size),
                                ("eval", d.eval, d.synthetic_eval_size)):
        try:
            rows[split] = load_rows(source, prompt_field=d.prompt_field,
                                    answer_field=d.answer_field, uid_field=d.uid_field,
                                    task=d.task, split=split, synthetic_size=size,
                                    synthetic_task=d.synthetic_task, seed=cfg.seed,
                                    graders=graders)
        except DataError as e:
            raise UserError(f"data.{split}: {e}") from None
    return rows


def encode_prompts(cfg: ExperimentConfig, rows: list[Any], split: str, tokenizer: Any) -> list[Any]:
    """Token ids of every prompt; a prompt longer than the engine's room is a one-line error."""
    from areal_sys.data.loading import render_prompt
    from areal_sys.trajectory import Prompt

    room = cfg.rollout.max_model_len - cfg.rollout.max_new_tokens
    limit = min(cfg.data.max_prompt_tokens, room)
    why = (f"data.max_prompt_tokens={limit}" if limit == cfg.data.max_prompt_tokens else
           f"rollout.max_model_len {cfg.rollout.max_model_len} - rollout.max_new_tokens "
           f"{cfg.rollout.max_new_tokens}")
    tools = None
    if cfg.rollout.episode.multi_turn:  # a chat template describes them to the model
        from areal_sys.tools import TOOL_SCHEMAS

        tools = [TOOL_SCHEMAS[name] for name in cfg.rollout.episode.tools]
    prompts = []
    for row in rows:
        try:
            ids = render_prompt(cfg.data.prompt_template, row.prompt, tokenizer, tools)
        except ValueError as e:
            raise UserError(f"data.prompt_template: {e}") from None
        if not ids:
            raise UserError(f"data.{split}: {row.where or row.uid}: the prompt encodes to no "
                            "tokens (check the tokenizer and data.prompt_template)")
        if len(ids) > limit:
            where = row.where or f"prompt {row.uid!r}"
            raise UserError(f"data.{split}: {where}: the prompt has {len(ids)} tokens, more than "
                            f"the {limit} that fit ({why})")
        prompts.append(Prompt(row.uid, ids, row.reference, row.task, row.prompt))
    return prompts


def check_episode(cfg: ExperimentConfig, tokenizer: Any) -> None:
    """`rollout.episode.kind`: a plugin must import and be callable; `tool_use`: the tokenizer
    must hold the protocol's call-end marker as one token (the engine stops on it)."""
    from areal_sys.episode import PROTOCOLS, load_episode, resolve_call_end

    ep = cfg.rollout.episode
    try:
        load_episode(ep.kind) if ep.multi_turn else None
    except ValueError as e:
        raise UserError(f"rollout.episode.kind={ep.kind}: {e}") from None
    if ep.kind == "tool_use":
        try:
            resolve_call_end(PROTOCOLS[ep.protocol],
                             lambda s: tokenizer.encode(s, add_special_tokens=False))
        except ValueError as e:
            raise UserError(f"rollout.episode.protocol={ep.protocol}: {e}") from None


def remote_graders(cfg: ExperimentConfig) -> set[str]:
    """The task names the reward server at `reward.url` grades (its GET /health), asked with the
    run's token; an unreachable server, a refused token or a server that is not ours is one
    line, before Ray starts."""
    import httpx

    assert cfg.reward.url is not None
    token = cfg.reward.resolve_token()
    url = f"{cfg.reward.url.rstrip('/')}/health"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=10.0)
    except httpx.HTTPError as e:
        raise UserError(f"reward.url: cannot reach {url}: {type(e).__name__}") from None
    if resp.status_code == 401:
        raise UserError(f"reward.url: {url} refused the token (HTTP 401); set reward.token_file "
                        f"or ${cfg.reward.token_env} to the server's token")
    if resp.status_code != 200:
        raise UserError(f"reward.url: {url} answered HTTP {resp.status_code}")
    try:
        graders = resp.json()["graders"]
        ok = isinstance(graders, list) and all(isinstance(g, str) for g in graders)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"reward.url: {url} does not list its graders: not an areal_sys reward "
                        "service?")
    return set(graders)


def check_model_dir(path: str | Path, what: str) -> Path:
    """`path` as a Hugging Face model directory (a config.json object in it, read as the engine's
    pre-flight reads it: workers/engine_start.py), else UserError."""
    from workers.engine_start import read_model_config

    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{what}: {path} is not a Hugging Face model directory (no config.json)")
    if read_model_config(path) is None:
        raise UserError(f"{what}: {config} is not a JSON object (a damaged model directory?)")
    return path


def load_tokenizer(path: str | Path, what: str) -> Any:
    """The tokenizer of a model directory; any failure is one line naming the directory."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - whatever a user's directory makes transformers raise
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{what}: cannot load the tokenizer of {path}: "
                        f"{type(e).__name__}: {reason}") from None
    if len(tokenizer) < 2:  # transformers builds an empty one when the files are missing
        raise UserError(f"{what}: {path} has no usable tokenizer (no tokenizer files?)")
    return tokenizer


def local_tokenizer(cfg: ExperimentConfig) -> tuple[Any, str]:
    """The tokenizer `run` will use, if it is here without building or downloading anything
    (the tiny model's is built in code); else None and why the prompts are not checked."""
    from areal_sys.config import TINY_MODEL

    path = cfg.model.path
    if path == TINY_MODEL:
        from areal_sys.models.tiny import build_tokenizer

        return build_tokenizer(), ""
    local = Path(path).expanduser()
    if local.is_dir():
        from controller.runtime import check_model  # the engine's pre-flight: head sizes

        check_model(cfg, str(check_model_dir(local, "model.path")))
        return load_tokenizer(local, "model.path"), ""
    try:
        from huggingface_hub import snapshot_download

        cached = snapshot_download(repo_id=path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the local cache: `run` downloads it
        return None, f"prompt lengths not checked: {path} is not downloaded yet"
    return load_tokenizer(check_model_dir(cached, "model.path"), "model.path"), ""


def check_run_dir(run_dir: str) -> list[Path]:
    """Check that `run_dir` is or can become a directory (nothing is created); return the
    earlier run's outputs in it (RUN_OUTPUTS present)."""
    path = Path(run_dir)
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"run_dir {run_dir!r:.200} exists and is not a directory")
        ancestor = path.absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not path.exists() and not ancestor.is_dir():
            raise UserError(f"run_dir {run_dir!r:.200} cannot be created: {ancestor} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"run_dir {run_dir!r:.200}: {ancestor} is not writable")
        return [path / name for name in RUN_OUTPUTS if (path / name).exists()]
    except OSError as e:  # e.g. a name too long
        raise UserError(f"run_dir {run_dir!r:.200}: {e.strerror}") from None


def make_run_dir(run_dir: str, remove: list[Path], config: str | None = None) -> Path:
    """Create run_dir, first deleting `remove` (an earlier run's outputs, --overwrite), and
    write `config` as its config.yaml."""
    path = Path(run_dir)
    try:
        for old in remove:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (path / "config.yaml").write_text(config, encoding="utf-8")
    except OSError as e:
        raise UserError(f"run_dir {run_dir!r:.200}: {e.strerror}: {e.filename}") from None
    if remove:
        print(f"overwrite: removed the earlier run's {', '.join(p.name for p in remove)} "
              f"from {path}")
    return path


def checkpoint_to_resume(cfg: ExperimentConfig) -> Path | None:
    """The latest complete checkpoint when `resume` is set (an error if there is none)."""
    if not cfg.resume:
        return None
    from controller.checkpoint import latest

    ckpt = latest(cfg.run_dir)
    if ckpt is None:
        raise UserError(f"resume: no complete checkpoint in {Path(cfg.run_dir) / 'checkpoints'}")
    if int(ckpt.name.removeprefix("step_")) >= cfg.trainer.total_steps:
        raise UserError(f"resume: {ckpt} is already at trainer.total_steps "
                        f"({cfg.trainer.total_steps}); raise it to train further")
    return ckpt
