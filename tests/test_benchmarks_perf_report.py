"""benchmarks.perf_report: samples of `perf script -F ip,sym,dso` attributed to our functions."""

from __future__ import annotations

from benchmarks import perf_report

MYPYC = "/x/d21b__mypyc.cpython-311-x86_64-linux-gnu.so"
PY = "/usr/lib/libpython3.11.so.1.0"

TEXT = f"""
\tffffffff81e2d63e tcp_sendmsg ([kernel.kallsyms])
\t          158cc7 PyObject_VectorcallMethod ({PY})
\t           ec3f1 CPyDef_exchange___Exchange____send_head ({MYPYC})
\t           ecf21 CPyDef_server___ClientConnection___data_received ({MYPYC})

\t          11638b _PyObject_GetMethod ({PY})
\t           ec3f1 CPyDef_exchange___Exchange____send_head ({MYPYC})

\t           e5dd llhttp__internal__run (/v/httptools/parser/parser.cpython-311.so)
\t           ecf21 CPyDef_server___ClientConnection___data_received ({MYPYC})

\t          1383f8 uv__io_poll (/v/uvloop/loop.cpython-311-x86_64-linux-gnu.so)
"""


def test_samples_are_split_on_blank_lines_leaf_first() -> None:
    got = list(perf_report.samples(TEXT.splitlines()))
    assert len(got) == 4
    assert got[0][0] == ("tcp_sendmsg", "[kernel.kallsyms]")


def test_time_goes_to_the_nearest_compiled_function() -> None:
    n, parts, owners, interp = perf_report.tally(TEXT.splitlines())
    assert n == 4
    assert parts == {"kernel": 1, "libpython": 1, "httptools (llhttp)": 1, "uvloop (libuv)": 1}
    assert owners["exchange.Exchange._send_head"] == 2  # its send, and its method lookup
    assert owners["server.ClientConnection.data_received"] == 1
    assert owners["(the event loop, outside our code)"] == 1
    assert interp == {"exchange.Exchange._send_head": 1}


def test_summary_lists_the_shares() -> None:
    text = perf_report.summarize(TEXT.splitlines())
    assert "4 samples" in text
    assert " 50.0%  exchange.Exchange._send_head" in text
    assert perf_report.summarize([]) == "no samples"
