"""Run lotavec Hub calls in a fresh interpreter and print their results as JSON (test helper).

Usage: ``python _api_call.py '[[FUNCTION, [args...], {kwargs...}], ...]'``. FUNCTION is a name in
:mod:`lotavec.hub`, or ``load_ticket`` (gives the ticket's tensor names, nnz and path). Prints one
JSON list as the last stdout line, an entry per call: ``{"ok": result}`` or
``{"error": class name, "message": str}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys


def _call(fn: str, args: list, kwargs: dict) -> dict:
    import lotavec.hub as hub
    from lotavec.errors import LotavecError

    try:
        if fn == "load_ticket":
            from lotavec.ticket import load_ticket

            with load_ticket(*args, **kwargs) as t:
                return {"ok": {"names": t.names, "nnz": t.nnz, "path": t.path}}
        result = getattr(hub, fn)(*args, **kwargs)
        return {"ok": dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result}
    except LotavecError as e:
        return {"error": type(e).__name__, "message": str(e)}


def main() -> None:
    calls = json.loads(sys.argv[1])
    print(json.dumps([_call(fn, args, kwargs) for fn, args, kwargs in calls], default=str))


if __name__ == "__main__":
    main()
