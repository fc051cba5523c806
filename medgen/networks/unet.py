"""Class-conditional ``DiffusionModelUNet`` with a null class for classifier-free guidance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet


class ConditionalDiffusionUNet(DiffusionModelUNet):
    """MONAI's ``DiffusionModelUNet`` with ``num_classes + 1`` class embeddings.

    The extra embedding (index ``num_classes``) is the null class: training drops labels to it with some
    probability and sampling uses it for the unconditional branch of classifier-free guidance. A missing
    ``class_labels`` means the null class. The state dict is that of a plain ``DiffusionModelUNet``.

    MONAI's ResNet blocks add the time+class embedding per channel before a GroupNorm; with one channel per
    group that norm removes the embedding entirely, so the default uses 16 groups (>= 2 channels per group).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 128),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int | Sequence[int] = 2,
        num_head_channels: int | Sequence[int] = 32,
        norm_num_groups: int = 16,
        resblock_updown: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            resblock_updown=resblock_updown,
            num_class_embeds=num_classes + 1,
            use_flash_attention=use_flash_attention,
        )
        self.num_classes = num_classes
        # the constructor's arguments, recorded with the weights (medgen.networks.weights_meta)
        self.init_args = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "num_classes": num_classes, "channels": list(channels), "attention_levels": list(attention_levels),
            "num_res_blocks": num_res_blocks, "num_head_channels": num_head_channels,
            "norm_num_groups": norm_num_groups, "resblock_updown": resblock_updown,
        }

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        return super().forward(
            x, timesteps, context, class_labels, down_block_additional_residuals, mid_block_additional_residual
        )
