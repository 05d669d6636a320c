"""`rollout.episode`: what one sample is: a single response (`single_turn`, the default) or a
multi-turn episode with tool calls (`tool_use`; areal_sys/episode.py, areal_sys/tools.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from areal_sys.config.base import Section
from areal_sys.tools import TOOLS, ToolLimits


class EpisodeConfig(Section):
    kind: str = Field(
        "single_turn", description="single_turn: one prompt, one response; tool_use: the model "
        "may call tools, whose results join its context (masked out of the loss); or a plugin "
        "'package.module:function' with tool_use's signature (areal_sys/episode.py)",
    )
    tools: list[Literal["calculator", "python"]] = Field(
        default_factory=lambda: ["calculator"], min_length=1, max_length=len(TOOLS),
        description="tools offered (tool_use): calculator (exact integer arithmetic), python "
        "(a program run in the reward service's sandbox)",
    )
    protocol: Literal["tiny", "plain", "qwen"] = Field(
        "tiny", description="how calls and results are marked: tiny ('(12*34)' then '=408': the "
        "tiny tool model's), plain (<call>...</call> <result>...</result>, single tokens of the "
        "vocabulary) or qwen (Qwen2.5's chat-template <tool_call> JSON and <tool_response> turns)",
    )
    max_turns: int = Field(4, ge=1, le=64, description="model turns per episode")
    tool_timeout_s: float = Field(5.0, gt=0, le=600, description="wall clock of one tool call")
    max_tool_output_chars: int = Field(
        200, ge=1, le=100_000, description="characters of a tool's result the model reads")
    python_wall_s: float = Field(2.0, gt=0, le=600, description="python tool: sandbox wall clock")
    python_memory_mb: int = Field(256, ge=16, le=1 << 20, description="python tool: memory")
    allow_unsafe_sandbox: bool = Field(
        False, description="let the python tool run where no sandbox mode fit for untrusted code "
        "is available (as reward.allow_unsafe_sandbox for the code grader)",
    )

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        from areal_sys.config.reward import _PLUGIN

        if v not in ("single_turn", "tool_use") and not _PLUGIN.fullmatch(v):
            raise ValueError(f"expected single_turn, tool_use or 'package.module:function', "
                             f"got {v!r}")
        return v

    @property
    def multi_turn(self) -> bool:
        """Samples are episodes (tool_use or a plugin), not single responses."""
        return self.kind != "single_turn"

    @field_validator("tools")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tools must be distinct, got {v}")
        return v

    def limits(self) -> ToolLimits:
        return ToolLimits(timeout_s=self.tool_timeout_s,
                          max_output_chars=self.max_tool_output_chars,
                          python_wall_s=self.python_wall_s,
                          python_cpu_s=max(1, int(self.python_wall_s + 0.999)),
                          python_memory_mb=self.python_memory_mb,
                          allow_unsafe_sandbox=self.allow_unsafe_sandbox)
