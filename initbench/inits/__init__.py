"""Weight initializers: a registry of names, and one walker that applies them to a model.

``initialize(model, init_cfg, seed=..., batch=...)`` is what a run calls; the in-place
functions ending in ``_`` are the initializers themselves, usable on any tensor or module.
"""

from initbench.inits.fixup import fixup_
from initbench.inits.lsuv import lsuv_
from initbench.inits.orthogonal import centre_tap, delta_orthogonal_, orthogonal_
from initbench.inits.recurrent import irnn_weight_, recurrent_weight_, set_forget_bias_
from initbench.inits.registry import (
    INITIALIZERS,
    InitializerSpec,
    activation_gain,
    check_init_config,
    describe_initializers,
    get_initializer,
    initialize,
)
from initbench.inits.spectral import add_spectral_norm, spectral_scale_
from initbench.inits.variance_scaling import (
    TRUNCATED_NORMAL_STD,
    kaiming_normal_,
    kaiming_uniform_,
    layer_fans,
    lecun_normal_,
    lecun_uniform_,
    normal_,
    truncated_normal_,
    uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
)

__all__ = [
    "INITIALIZERS",
    "TRUNCATED_NORMAL_STD",
    "InitializerSpec",
    "activation_gain",
    "add_spectral_norm",
    "centre_tap",
    "check_init_config",
    "delta_orthogonal_",
    "describe_initializers",
    "fixup_",
    "get_initializer",
    "initialize",
    "irnn_weight_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "layer_fans",
    "lecun_normal_",
    "lecun_uniform_",
    "lsuv_",
    "normal_",
    "orthogonal_",
    "recurrent_weight_",
    "set_forget_bias_",
    "spectral_scale_",
    "truncated_normal_",
    "uniform_",
    "variance_scaling_",
    "xavier_normal_",
    "xavier_uniform_",
]
