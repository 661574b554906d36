"""Run one lotavec Hub call in a fresh interpreter and print its result as JSON (test helper).

Usage: ``python _api_call.py FUNCTION '{"args": [...], "kwargs": {...}}'``. FUNCTION is a name in
:mod:`lotavec.hub`, or ``load_ticket`` (prints the ticket's tensor names and nnz). Prints
``{"ok": result}`` or ``{"error": class name, "message": str}`` as the last stdout line.
"""

from __future__ import annotations

import dataclasses
import json
import sys


def main() -> None:
    fn, payload = sys.argv[1], json.loads(sys.argv[2])
    import lotavec.hub as hub
    from lotavec.errors import LotavecError

    try:
        if fn == "load_ticket":
            from lotavec.ticket import load_ticket

            with load_ticket(*payload["args"], **payload["kwargs"]) as t:
                result = {"names": t.names, "nnz": t.nnz, "path": t.path}
        else:
            result = getattr(hub, fn)(*payload["args"], **payload["kwargs"])
            if dataclasses.is_dataclass(result):
                result = dataclasses.asdict(result)
        print(json.dumps({"ok": result}, default=str))
    except LotavecError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))


if __name__ == "__main__":
    main()
