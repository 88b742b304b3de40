"""Socket guard for tests: put this folder first on PYTHONPATH and every Python process that
inherits it (Snakemake, each `python -m kdbench` job) refuses network access: a name lookup or
a connection raises OSError and is appended to the file named by $KDBENCH_NETGUARD_LOG, so a
test sees attempts even where the library caught the error and carried on."""
import os
import socket
import traceback

_LOG = os.environ.get("KDBENCH_NETGUARD_LOG")


def _refuse(what):
    def guard(*args, **kwargs):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"pid {os.getpid()} {what}{args[1:] if what.startswith('socket.') else args}\n")
                f.write("".join(traceback.format_stack(limit=12)) + "\n")
        raise OSError(f"network access refused by the test socket guard: {what}")
    return guard


for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
    setattr(socket, _name, _refuse(_name))
socket.socket.connect = _refuse("socket.connect")
socket.socket.connect_ex = _refuse("socket.connect_ex")
