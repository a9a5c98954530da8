#!/usr/bin/env python3
"""Turns the benchmark's JSON lines into a table of medians with spread and postern/peer ratios.

Input: one line per measurement, {"figure", "peer", "round", "result": <loadgen's JSON line>}.
Output: a plain table on stdout and the same as markdown in --markdown.
"""
import argparse
import json
import statistics
import sys

PEERS = ["postern", "ceiling", "nginx", "haproxy", "stunnel", "hitch"]
# Not a peer: the sink's dialogue with TLS in its own process, the in-process ceiling (issue 18).
# It gets a column and postern's share of it, and is never the "best peer".
CEILING = "ceiling"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def value_of(result, key):
    if not isinstance(result, dict) or "error" in result:
        return None
    v = result.get(key)
    return v if isinstance(v, (int, float)) else None


def flawed(result):
    """A measurement that lost sessions or requests: still shown, but marked."""
    if not isinstance(result, dict):
        return True
    return bool(result.get("failed")) or bool(result.get("unanswered")) or bool(result.get("lost"))


class Figures:
    def __init__(self, rows):
        self.by = {}        # (figure, peer) -> {round: result}
        self.floor = {}
        for row in rows:
            if row["figure"] == "crypto_floor":
                self.floor = row["result"]
                continue
            self.by.setdefault((row["figure"], row["peer"]), {})[row["round"]] = row["result"]

    def samples(self, figure, peer, key):
        out, marks = [], False
        for _, result in sorted(self.by.get((figure, peer), {}).items()):
            v = value_of(result, key)
            if v is not None:
                out.append(v)
                marks = marks or flawed(result)
        return out, marks

    def floor_share(self, figure, peer, floor_key):
        floor = self.floor.get(floor_key)
        values, marks = self.samples(figure, peer, "per_proxy_cpu_s")
        if not floor:
            return [], False
        return [100.0 * v / floor for v in values], marks

    def scaled(self, figure, peer, key, factor):
        values, marks = self.samples(figure, peer, key)
        return [v * factor for v in values], marks


# (title, unit, better, decimals, how to get the samples)
ROWS = [
    ("TLS 1.3 setups, ECDSA P-256", "per proxy CPU-s", "higher", 0,
     lambda f, p: f.samples("hs_ecdsa", p, "per_proxy_cpu_s")),
    ("  raw rate (shared cores)", "setups/s", "higher", 0,
     lambda f, p: f.samples("hs_ecdsa", p, "rate_per_s")),
    ("  share of crypto floor", "% of floor", "higher", 1,
     lambda f, p: f.floor_share("hs_ecdsa", p, "ecdsap256_handshake_floor_per_s")),
    ("TLS 1.3 setups, RSA-2048", "per proxy CPU-s", "higher", 0,
     lambda f, p: f.samples("hs_rsa", p, "per_proxy_cpu_s")),
    ("  raw rate (shared cores)", "setups/s", "higher", 0,
     lambda f, p: f.samples("hs_rsa", p, "rate_per_s")),
    ("  share of crypto floor", "% of floor", "higher", 1,
     lambda f, p: f.floor_share("hs_rsa", p, "rsa2048_handshake_floor_per_s")),
    ("TLS session setup + LOGIN, ECDSA", "per proxy CPU-s", "higher", 0,
     lambda f, p: f.samples("hs_login", p, "per_proxy_cpu_s")),
    ("  raw rate (shared cores)", "setups/s", "higher", 0,
     lambda f, p: f.samples("hs_login", p, "rate_per_s")),
    ("STARTTLS upgrades (+NOOP)", "per proxy CPU-s", "higher", 0,
     lambda f, p: f.samples("starttls", p, "per_proxy_cpu_s")),
    ("  raw rate (shared cores)", "upgrades/s", "higher", 0,
     lambda f, p: f.samples("starttls", p, "rate_per_s")),
    ("STARTTLS upgrades + LOGIN", "per proxy CPU-s", "higher", 0,
     lambda f, p: f.samples("starttls_login", p, "per_proxy_cpu_s")),
    ("  raw rate (shared cores)", "upgrades/s", "higher", 0,
     lambda f, p: f.samples("starttls_login", p, "rate_per_s")),
    ("Bulk upload, one TLS session", "MB/s", "higher", 0,
     lambda f, p: f.samples("bulk_up", p, "mb_s")),
    ("  per proxy CPU-second", "MB per CPU-s", "higher", 0,
     lambda f, p: f.samples("bulk_up", p, "mb_per_proxy_cpu_s")),
    ("Bulk download, one TLS session", "MB/s", "higher", 0,
     lambda f, p: f.samples("bulk_down", p, "mb_s")),
    ("  per proxy CPU-second", "MB per CPU-s", "higher", 0,
     lambda f, p: f.samples("bulk_down", p, "mb_per_proxy_cpu_s")),
    ("Added round trip p50", "µs over direct", "lower", 1,
     lambda f, p: f.samples("latency", p, "added_p50_us")),
    ("Added round trip p99", "µs over direct", "lower", 1,
     lambda f, p: f.samples("latency", p, "added_p99_us")),
    ("Unloaded session setup p50", "ms", "lower", 3,
     lambda f, p: f.scaled("setup", p, "p50_us", 1e-3)),
    ("Unloaded session setup p99", "ms", "lower", 3,
     lambda f, p: f.scaled("setup", p, "p99_us", 1e-3)),
    ("Memory per idle TLS session", "KiB RSS", "lower", 1,
     lambda f, p: f.samples("idle", p, "kib_per_session")),
]


def fmt(v, decimals):
    if v is None:
        return "n/a"
    if decimals == 0 or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{decimals}f}"


def cell(values, decimals, marked):
    if not values:
        return "n/a", None
    med = statistics.median(values)
    text = fmt(med, decimals)
    if len(values) > 1:
        text += f" ({fmt(min(values), decimals)}–{fmt(max(values), decimals)})"
    if marked:
        text += " *"
    return text, med


def ratio(postern, peer):
    if postern is None or peer is None or peer == 0:
        return "n/a"
    if postern <= 0 and peer <= 0:
        return "n/a"
    return f"{postern / peer:.2f}"


def build(figures, peers):
    table = []
    parent = ""
    for title, unit, better, decimals, get in ROWS:
        if not title.startswith("  "):
            parent = title
        # Sub-rows keep their figure's name where indentation does not show (markdown).
        full = title if not title.startswith("  ") else f"{parent}: {title.strip()}"
        cells, medians = [], {}
        for p in peers:
            values, marked = get(figures, p)
            text, med = cell(values, decimals, marked)
            cells.append(text)
            medians[p] = med
        others = {p: m for p, m in medians.items()
                  if p not in ("postern", CEILING) and m is not None}
        best_peer = None
        if others:
            pick = max if better == "higher" else min
            best_peer = pick(others, key=lambda p: others[p])
        ratios = [ratio(medians.get("postern"), medians.get(p)) for p in peers if p != "postern"]
        # postern as a share of the ceiling: for ↑ rows postern/ceiling, for ↓ rows
        # ceiling/postern, so that 100% is "as good as TLS inside the server" either way.
        of_ceiling = "n/a"
        c, m = medians.get(CEILING), medians.get("postern")
        if c and m and c > 0 and m > 0:
            share = m / c if better == "higher" else c / m
            of_ceiling = f"{100.0 * share:.0f}%"
        best = (f"{best_peer} {fmt(others[best_peer], decimals)}" if best_peer else "n/a")
        vs_best = ratio(medians.get("postern"), others.get(best_peer)) if best_peer else "n/a"
        table.append(dict(title=title, full=full, unit=unit, better=better, cells=cells, ratios=ratios,
                          best=best, vs_best=vs_best, of_ceiling=of_ceiling))
    return table


def baseline_lines(figures):
    lines = []
    p50, p99 = [], []
    for (figure, _), runs in figures.by.items():
        if figure == "latency":
            p50 += [v for v in (value_of(r, "direct_p50_us") for r in runs.values()) if v is not None]
            p99 += [v for v in (value_of(r, "direct_p99_us") for r in runs.values()) if v is not None]
    if p50:
        lines.append("Direct round trip to the sink (no TLS, no proxy, timed in the same runs): "
                     f"p50 {statistics.median(p50):.1f} µs, p99 {statistics.median(p99):.1f} µs "
                     "(medians over all latency runs).")
    fl = figures.floor
    if fl:
        lines.append("Crypto floor (openssl speed, one core): "
                     f"ECDSA P-256 {fl.get('ecdsap256_sign_per_s', 0):,.0f} signs/s, "
                     f"RSA-2048 {fl.get('rsa2048_sign_per_s', 0):,.0f} signs/s, "
                     f"X25519 {fl.get('x25519_per_s', 0):,.0f} derives/s; a server handshake's "
                     "public-key work (1 signature + 1 X25519 key generation + 1 derive) caps "
                     f"ECDSA at {fl.get('ecdsap256_handshake_floor_per_s', 0):,.0f}/s and RSA at "
                     f"{fl.get('rsa2048_handshake_floor_per_s', 0):,.0f}/s per core "
                     "(the \"share of crypto floor\" rows).")
    return lines


# --profile: perf's samples by library, turned into CPU time per session (or per MB) by part.
PROFILED = [  # (figure, title, loadgen's rate per proxy CPU-second, unit)
    ("hs_ecdsa", "TLS 1.3 setups, ECDSA", "per_proxy_cpu_s", "µs per session"),
    ("hs_rsa", "TLS 1.3 setups, RSA", "per_proxy_cpu_s", "µs per session"),
    ("hs_login", "Session setup + LOGIN", "per_proxy_cpu_s", "µs per session"),
    ("starttls", "STARTTLS (+NOOP)", "per_proxy_cpu_s", "µs per session"),
    ("starttls_login", "STARTTLS + LOGIN", "per_proxy_cpu_s", "µs per session"),
    ("bulk_up", "Bulk upload", "mb_per_proxy_cpu_s", "µs per MB"),
    ("bulk_down", "Bulk download", "mb_per_proxy_cpu_s", "µs per MB"),
]
PARTS = ["OpenSSL", "kernel", "libc", "libuv", "own"]


def part_of(library):
    if library.startswith("libcrypto") or library.startswith("libssl"):
        return "OpenSSL"
    if library.startswith("[kernel"):
        return "kernel"
    if library.startswith(("libc.so", "libc-", "libstdc++", "libm.so", "ld-linux", "libgcc")):
        return "libc"
    if library.startswith("libuv"):
        return "libuv"
    return "own"  # the proxy's binary, its modules and anything else it links (vdso included)


def parts_per_unit(result, rate_key):
    """{part: µs per unit} for one measurement, or None without a profile."""
    rate = value_of(result, rate_key)
    profile = result.get("profile") if isinstance(result, dict) else None
    if not rate or not profile:
        return None
    total = sum(profile.values())
    if total <= 0:
        return None
    cost = 1e6 / rate
    out = {part: 0.0 for part in PARTS}
    for library, share in profile.items():
        out[part_of(library)] += cost * share / total
    out["total"] = cost
    return out


def profile_section(figures, peers):
    """Markdown lines: per figure and proxy, the median cost per unit by part, and postern's
    extra over the ceiling by part. Empty without profiles."""
    rows, gaps = [], []
    for figure, title, rate_key, unit in PROFILED:
        medians = {}
        for peer in peers:
            runs = [parts_per_unit(r, rate_key) for _, r in sorted(figures.by.get((figure, peer), {}).items())]
            runs = [r for r in runs if r]
            if not runs:
                continue
            medians[peer] = {k: statistics.median(r[k] for r in runs) for k in PARTS + ["total"]}
            m = medians[peer]
            rows.append(f"| {title} | {peer} | {m['total']:,.1f} | " +
                        " | ".join(f"{m[k]:,.1f}" for k in PARTS) + f" | {unit} |")
        p, c = medians.get("postern"), medians.get(CEILING)
        if p and c:
            extra = {k: p[k] - c[k] for k in PARTS + ["total"]}
            outside = extra["OpenSSL"] + extra["kernel"]
            own = p["libuv"] + p["own"]
            gaps.append(f"| {title} | {extra['total']:+,.1f} | " +
                        " | ".join(f"{extra[k]:+,.1f}" for k in PARTS) +
                        f" | {100.0 * outside / extra['total']:.0f}% | {own:,.1f} "
                        f"({100.0 * own / p['total']:.1f}%) | {unit} |"
                        if extra["total"] > 0 else
                        f"| {title} | {extra['total']:+,.1f} | " +
                        " | ".join(f"{extra[k]:+,.1f}" for k in PARTS) + f" | n/a | {own:,.1f} | {unit} |")
    if not rows:
        return []
    lines = ["", "### Where the time goes (perf in the same run)", "",
             "CPU time of the proxy's processes per unit, split by where perf's samples fell: "
             "OpenSSL (libcrypto, libssl), the kernel, libc (and libstdc++), libuv, and the "
             "proxy's own code (its binary, its modules, any other library it links). "
             "Medians over rounds of each part.", "",
             "| figure | proxy | total | " + " | ".join(PARTS) + " | unit |",
             "|" + "---|" * (len(PARTS) + 4)] + rows
    if gaps:
        lines += ["", "postern's extra over the ceiling, by part (the same units), the share of "
                  "that extra that is the kernel's or OpenSSL's, and postern's own code with "
                  "libuv, in all:", "",
                  "| figure | extra | " + " | ".join(PARTS) +
                  " | kernel + OpenSSL of the extra | postern's own + libuv | unit |",
                  "|" + "---|" * (len(PARTS) + 5)] + gaps
    return lines


def render_text(table, peers):
    head = ["figure", "unit"] + peers + [f"postern/{p}" for p in peers if p != "postern"] + \
        ["best peer", "postern/best", "of ceiling"]
    body = [[r["title"], r["unit"] + (" ↑" if r["better"] == "higher" else " ↓")] + r["cells"] +
            r["ratios"] + [r["best"], r["vs_best"], r["of_ceiling"]] for r in table]
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    out = []
    for row in [head] + body:
        out.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def render_markdown(table, peers, notes, machine, mode, profile=()):
    lines = ["# postern benchmark results", ""]
    if machine:
        lines.append(f"Machine: {machine}. Run: {mode}.")
        lines.append("")
    head = ["figure", "unit"] + peers + ["best peer", "postern/best", "postern of ceiling"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in table:
        arrow = " ↑" if r["better"] == "higher" else " ↓"
        lines.append("| " + " | ".join([r["full"], r["unit"] + arrow] + r["cells"] +
                                        [r["best"], r["vs_best"], r["of_ceiling"]]) + " |")
    lines += ["", "Ratios postern/peer (medians; ↑ rows: above 1 is postern ahead, "
              "↓ rows: below 1 is postern ahead):", ""]
    others = [p for p in peers if p != "postern"]
    lines.append("| figure | " + " | ".join(f"vs {p}" for p in others) + " |")
    lines.append("|" + "---|" * (len(others) + 1))
    for r in table:
        lines.append(f"| {r['full']} ({r['unit']}) | " + " | ".join(r["ratios"]) + " |")
    lines.append("")
    lines += notes
    lines += profile
    lines += ["", "Cells: median (min–max) over rounds. `*`: some sessions or requests failed in "
              "that measurement (see the JSON lines). nginx is nginx stream for TLS figures and "
              "nginx mail for STARTTLS. n/a: the peer cannot do that figure. `ceiling`: the sink's "
              "dialogue with TLS terminated in its own process (same OpenSSL, certificates and "
              "settings, no forwarding hop); \"postern of ceiling\" is postern's median as a share "
              "of it (for ↓ rows ceiling/postern), 100% meaning as good as TLS inside the server."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--markdown")
    parser.add_argument("--machine", default="")
    parser.add_argument("--mode", default="")
    args = parser.parse_args()
    figures = Figures(load(args.results))
    present = {peer for (_, peer) in figures.by}
    peers = [p for p in PEERS if p in present]
    table = build(figures, peers)
    notes = baseline_lines(figures)
    print(render_text(table, peers))
    print()
    for n in notes:
        print(n)
    print("Cells: median (min–max) over rounds; * = failures in that measurement; ↑ higher is "
          "better, ↓ lower is better.")
    for line in profile_section(figures, peers):
        print(line)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render_markdown(table, peers, notes, args.machine, args.mode,
                                    profile_section(figures, peers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
