"""One pydantic config model per stage. Flows take them as parameters; artifacts record them."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import PydanticUndefined

from iap.system.ids import content_id

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the default base
ZH_768 = "hfl/chinese-roberta-wwm-ext"  # the default Chinese encoder: 768 wide, as SD 1.x's cross-attention


def launch_field(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """A config field that says how (or how long) a stage runs, not what it computes: parallelism, batch
    sizes of frozen passes, budgets, the step count of a resumable run. It is outside every content id,
    so changing it reuses a cache or snapshot and resumes a run. The only such marker in the code."""
    return Field(default, json_schema_extra={"content_id": False}, **kwargs)


def added_field(default: Any, **kwargs: Any) -> Any:
    """A content field added after ids were first given out: left out of the id while it holds its default,
    so the caches, snapshots and runs of earlier versions keep their ids; set, it changes the id."""
    return Field(default, json_schema_extra={"added_later": True}, **kwargs)


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # --train-lr inf is a typo, never a setting

    @classmethod
    def launch_fields(cls) -> set[str]:
        return {name for name, f in cls.model_fields.items()
                if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("content_id") is False}

    def identity(self) -> str:
        """The content hash of the fields that change what the stage computes."""
        data = self.model_dump(mode="json", exclude=self.launch_fields())
        for name, f in type(self).model_fields.items():
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("added_later") and \
                    getattr(self, name) == f.default:
                data.pop(name)
        return content_id(json.dumps(data, sort_keys=True))


class TrainConfig(StageConfig):
    """How the Chinese encoder is trained."""

    objective: Literal["pivot", "separate", "embedding-mse", "eps-distill"] = "pivot"
    steps: int = launch_field(1000, ge=1, description="a run resumes with more steps")
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    checkpoint_every: int = launch_field(200, ge=1)
    keep_checkpoints: int = launch_field(2, ge=1)
    log_every: int = launch_field(50, ge=1)
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = launch_field(
        "none", description="experiment tracker for loss, lr, samples/s and the held-out metrics (accelerate's; "
        "files under RUN/trackers)")
    empty_prompt_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of samples trained as the empty prompt on both sides (zh '' -> en ''), "
        "so the encoder also serves classifier-free guidance's unconditional branch")
    layer_weights: dict[str, float] = Field(default_factory=dict,
                                            description="layer-name prefix -> weight (default 1)")
    pooled_weight: float = added_field(1.0, ge=0, description="SDXL: weight of the pooled-embedding MSE (zh vs en) beside "
                                 "the attention objective; the pooled path bypasses cross-attention")
    # the launch: the data order depends only on the step, so a run may resume on more processes
    num_processes: int = launch_field(1, ge=1, description="data-parallel processes on this machine (torchrun)")
    accelerate_config: str | None = launch_field(None, description="an accelerate config file (GPUs, nodes); "
                                   "overrides num_processes")

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.accelerate_config is not None
