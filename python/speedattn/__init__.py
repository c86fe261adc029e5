"""speedattn — MindSpore's speed_fusion_attention on the CPU (numpy and torch front ends).

    import speedattn
    out, smax, ssum, _, seed, offset, numels = speedattn.speed_fusion_attention(
        q, k, v, head_num=N1, input_layout="BNSD", scale=1 / D**0.5)
"""

from . import _core
from ._api import (
    get_num_threads,
    manual_seed,
    rng_state,
    set_num_threads,
    speed_fusion_attention,
    speed_fusion_attention_grad,
)
from ._core import backward_kernel_for, cpu_features, forward_kernel_for, isa_cap

__version__ = _core.version()

__all__ = [
    "__version__",
    "speed_fusion_attention",
    "speed_fusion_attention_grad",
    "manual_seed",
    "rng_state",
    "set_num_threads",
    "get_num_threads",
    "cpu_features",
    "isa_cap",
    "forward_kernel_for",
    "backward_kernel_for",
]

from .utils import softmax_lse, cu_seqlens_to_actual_seq, actual_seq_to_cu_seqlens  # noqa: E402
