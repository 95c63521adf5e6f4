"""`python -m katib_services suggestion|earlystopping [--port N]`: serve until the pod stops."""

from __future__ import annotations

import argparse

from katib_services import server, stubs


def main() -> None:
    parser = argparse.ArgumentParser(prog="katib_services", description=__doc__)
    parser.add_argument("service", choices=("suggestion", "earlystopping"))
    parser.add_argument("--port", type=int, help="default: 6789 for suggestion, 6788 else")
    args = parser.parse_args()
    api, glue = stubs.load()
    if args.service == "suggestion":
        port = args.port or server.PORT
        serving = server.serve(api, glue, port)
        what = f"Suggestion ({', '.join(server.SERVED)})"
    else:
        port = args.port or server.EARLY_STOPPING_PORT
        serving = server.serve_early_stopping(api, glue, port)
        what = "EarlyStopping (medianstop)"
    print(f"katib_services: serving {what} on port {port}", flush=True)
    serving.wait_for_termination()


if __name__ == "__main__":
    main()
