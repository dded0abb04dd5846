"""The one error every check raises."""

from __future__ import annotations

__all__ = ["DEFAULT_FIX", "ModelRefusedError"]

DEFAULT_FIX = "save a plain model that uses only tensor operators (modelcheck.allowlist lists them)"


class ModelRefusedError(ValueError):
    """An uploaded model file was refused before anything in it was loaded.

    Parameters
    ----------
    problem : str
        What is wrong, as a clause: ``"the model calls torch.save, which writes files"``.
    op : str, optional
        The operator, name or entry refused (``"torch.save"``, ``"aten.from_file"``,
        ``"os.system"``), when there is one.
    location : str, optional
        Where it is: ``"code/__torch__/model.py:12"``, ``"node 'Gemm_3'"``,
        ``"models/model.json, node 'linear'"``.
    fix : str
        What the user can do instead, as a clause.

    Attributes
    ----------
    message : str
        One sentence naming the problem, the op and location, and the fix; also
        ``str(error)``.
    op : str or None
    location : str or None
    """

    def __init__(
        self,
        problem: str,
        *,
        op: str | None = None,
        location: str | None = None,
        fix: str = DEFAULT_FIX,
    ) -> None:
        where = f" (at {location})" if location else ""
        self.problem = problem
        self.op = op
        self.location = location
        self.message = f"model refused: {problem}{where}; {fix}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
