"""How a DyT's parameters are chosen: `fixed` (a constant or the paper's alpha, the norm's gamma/beta), `calibrate`
(alpha fitted to each norm on real activations) and `refit` (closed-form least-squares refits beside it)."""
