"""requests/s: wrk -t1 against b to q (bench.targets) with one valid key, a warm-up run
per target, then interleaved rounds so drift hits every target alike. Prints each round,
then the medians (requests/s, p50, p99) and the ratio to c, nginx + auth_request."""

from __future__ import annotations

from bench.lab.clients import WrkResult, run_wrk
from bench.lab.host import process_tree_rss, process_trees_cpu
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
