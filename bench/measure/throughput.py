"""requests/s: wrk -t1 against b to q (bench.targets) with one valid key, a warm-up run
per target, then interleaved rounds so drift hits every target alike. Prints each round,
then the medians (requests/s, p50, p99) and the ratio to c, nginx + auth_request. Then
the same comparison with one core each (ONE_CORE)."""

from __future__ import annotations

import os

from bench.lab.clients import WrkResult, run_wrk
from bench.lab.host import pin_process_trees, process_tree_rss, process_trees_cpu
from bench.report import fmt_bytes, median
from bench.targets import TARGETS, WrkTargets


def measure(targets: WrkTargets, key: str, rounds: int, seconds: float, connections: int) -> None:
    warm_up(targets, key, seconds, connections)
    raw = run_rounds(targets, key, rounds, seconds, connections)
    for target in raw:
        for one_run in raw[target]:
            if one_run.errors:
                print(f"  {target}: {one_run.errors}")
    print_medians(raw)
    print_rss(targets)
    one_core(targets, key, rounds, seconds, connections)


def warm_up(targets: WrkTargets, key: str, seconds: float, connections: int) -> None:
    """One short run per target: caches the key in every worker."""
    warm = max(1.0, min(3.0, seconds / 3))
    for target, url in targets.urls.items():
        run_wrk(url, key, warm, connections, targets.scripts.get(target))


def run_rounds(
    targets: WrkTargets, key: str, rounds: int, seconds: float, connections: int
) -> dict[str, list[WrkResult]]:
    urls = targets.urls
    raw: dict[str, list[WrkResult]] = {t: [] for t in urls}
    print(
        f"{'round':<6} "
        + "  ".join(f"{t}: {'req/s':>8} {'p50':>6} {'p99':>6}" for t in urls)
        + "   (ms)"
    )
    for n in range(1, rounds + 1):
        for target, url in urls.items():
            before = process_trees_cpu(targets.serving[target])
            result = run_wrk(url, key, seconds, connections, targets.scripts.get(target))
            used = process_trees_cpu(targets.serving[target]) - before
            result.cpu_us = used * 1e6 / max(1, result.requests)
            raw[target].append(result)
        print(
            f"{n:<6} "
            + "  ".join(
                f"{t}: {raw[t][-1].rps:8.0f} {raw[t][-1].p50_ms:6.2f} {raw[t][-1].p99_ms:6.2f}"
                for t in urls
            ),
            flush=True,
        )
    return raw


def print_medians(raw: dict[str, list[WrkResult]]) -> None:
    def rps(target: str) -> float:
        return median([r.rps for r in raw[target]])

    def p99(target: str) -> float:
        return median([r.p99_ms for r in raw[target]])

    def cpu(target: str) -> float:
        return median([r.cpu_us for r in raw[target]])

    print(
        f"\n{'target':<32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx+auth_request':>22}"
        f" {'CPU us/req':>11}"
    )
    for target in raw:
        print(
            f"{target + ' ' + TARGETS[target]:<32} {rps(target):9.0f} "
            f"{median([r.p50_ms for r in raw[target]]):8.2f} {p99(target):8.2f} "
            f"{rps(target) / rps('c'):22.2f} {cpu(target):11.1f}"
        )
    print(
        "(medians over rounds; the p50/p99 columns are medians of each round's percentile;\n"
        " CPU us/req: user + system CPU of the processes serving the target, the upstream a\n"
        " and wrk left out, per request: unlike req/s, it barely moves when something else\n"
        " runs on the machine)"
    )
    print(
        f"as installed, access logs on both sides: authproxy d {rps('d') / rps('c'):.2f}x "
        f"nginx + auth_request c; p99 {p99('d') / p99('c'):.2f}x c's; CPU per request "
        f"{cpu('d') / cpu('c'):.2f}x c's"
    )
    print(
        f"every head new (g, h: a new X-Bench-Seq per request, so no repeated header "
        f"block to reuse; wrk's Lua costs it CPU too): authproxy {rps('h') / rps('g'):.2f}x "
        f"nginx + auth_request; CPU per request {cpu('h') / cpu('g'):.2f}x"
    )
    print(
        f"quiet, both access logs off (m, q): authproxy {rps('q') / rps('m'):.2f}x; "
        f"authproxy's access log costs {1 - rps('d') / rps('q'):.0%} of its quiet rate "
        f"({cpu('d') / cpu('q') - 1:.0%} more CPU per request), nginx's "
        f"{1 - rps('c') / rps('m'):.0%} ({cpu('c') / cpu('m') - 1:.0%})"
    )
    print(
        f"forward-auth: nginx + auth_request asking authproxy's verify (v) "
        f"{rps('v') / rps('c'):.2f}x asking the minimal verifier (c); CPU per request "
        f"{cpu('v') / cpu('c'):.2f}x. Asked directly: authproxy verify {rps('w'):.0f} req/s, "
        f"the minimal verifier {rps('x'):.0f} ({rps('w') / rps('x'):.2f}x; CPU per request "
        f"{cpu('w') / cpu('x'):.2f}x)"
    )


def print_rss(targets: WrkTargets) -> None:
    rss_d, _, _ = process_tree_rss(targets.daemons["d"][0].process.pid)
    rss_e, _, procs_e = process_tree_rss(targets.daemons["e"][0].process.pid)
    print(
        f"RSS after the runs: d {fmt_bytes(rss_d)}; "
        f"e {fmt_bytes(rss_e)} in {procs_e} processes (supervisor + workers)"
    )


# (authproxy, its peer): the rows compared again with one core each.
ONE_CORE = (("d", "c"), ("h", "g"))


def one_core(targets: WrkTargets, key: str, rounds: int, seconds: float, connections: int) -> None:
    """The main rows' bars compare one authproxy process with nginx and its verifier, two
    processes that spread over both cores while authproxy has one. Here the processes
    serving each target get the first CPU alone, and wrk and the upstream the second:
    the same work on the same CPU, whatever else the machine does."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("one core each: skipped (fewer than 2 CPUs)")
        return
    serving_cpu, client_cpu, every_cpu = {cpus[0]}, {cpus[1]}, set(cpus)
    raw: dict[str, list[WrkResult]] = {t: [] for pair in ONE_CORE for t in pair}
    pin_process_trees([targets.upstream], client_cpu)
    try:
        for _ in range(rounds):
            for target in raw:
                pids = targets.serving[target]
                pin_process_trees(pids, serving_cpu)
                try:
                    before = process_trees_cpu(pids)
                    result = run_wrk(
                        targets.urls[target],
                        key,
                        seconds,
                        connections,
                        targets.scripts.get(target),
                        cpus=client_cpu,
                    )
                    result.cpu_us = (
                        (process_trees_cpu(pids) - before) * 1e6 / max(1, result.requests)
                    )
                finally:
                    pin_process_trees(pids, every_cpu)
                raw[target].append(result)
    finally:
        pin_process_trees([targets.upstream], every_cpu)
    print(
        f"\none core each (the serving processes on CPU {cpus[0]}, wrk and the upstream on "
        f"CPU {cpus[1]}; {rounds} interleaved round(s), medians):"
    )
    for ours, peer in ONE_CORE:
        rps = {t: median([r.rps for r in raw[t]]) for t in (ours, peer)}
        cpu = {t: median([r.cpu_us for r in raw[t]]) for t in (ours, peer)}
        p99 = {t: median([r.p99_ms for r in raw[t]]) for t in (ours, peer)}
        print(
            f"  {ours} {rps[ours]:.0f} req/s against {peer} {rps[peer]:.0f}: "
            f"{rps[ours] / rps[peer]:.2f}x; CPU per request {cpu[ours]:.1f} against "
            f"{cpu[peer]:.1f} us ({cpu[ours] / cpu[peer]:.2f}x); p99 {p99[ours] / p99[peer]:.2f}x"
        )
