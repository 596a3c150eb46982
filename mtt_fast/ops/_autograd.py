"""Helpers for the ops' autograd Functions."""

from __future__ import annotations

import torch


def engine_needs(ctx, i: int) -> bool:
    """Whether the running backward pass needs the gradient of input ``i``.

    ``ctx.needs_input_grad`` only says that an input requires grad; inside
    ``torch.autograd.grad(loss, theta, create_graph=True)`` (the student's gradient) the
    images' gradient is not needed although the images require grad. This asks the engine
    whether the node behind the input will run; when it cannot tell (a leaf input during
    ``autograd.grad``), the answer is True.
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (RuntimeError, AttributeError):
        return True
