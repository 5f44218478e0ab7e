#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/seed-* from the repository's own inputs:
policy.example.toml, docs and README TOML snippets, policies and inventories in the tests,
the recorded Docker and Podman answers (tests/fixtures/), kernel log lines of the tests,
and hand-built nfnetlink / ctnetlink messages. Run by scripts/fuzz.sh --seeds."""
import glob, hashlib, json, os, re, struct, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "fuzz", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(p):
    with open(os.path.join(root, p), encoding="utf-8") as f:
        return f.read()


def toml_snippets():
    texts = []
    for md in ["README.md"] + sorted(glob.glob(os.path.join(root, "docs", "*.md"))):
        texts += re.findall(r"```toml\n(.*?)```", read(md), re.S)
    for rs in sorted(glob.glob(os.path.join(root, "tests", "*.rs"))) + sorted(
        glob.glob(os.path.join(root, "src", "**", "*.rs"), recursive=True)
    ):
        texts += re.findall(r'r#"(.*?)"#', read(rs), re.S)
    return texts


# policy and inventory
put("policy", read("policy.example.toml"))
put("inventory", read("docs/example-inventory.toml"))
for t in toml_snippets():
    if "[[container" in t:
        put("inventory", t)
    elif "[groups" in t or "[[allow" in t or "[settings" in t or "[[separate" in t:
        put("policy", t)

# docker / podman answers, with the host veths the mapping tests resolve to
def fixture(d, name):
    p = os.path.join(root, "tests", "fixtures", d, name)
    return json.load(open(p)) if os.path.exists(p) else None


VETHS = {
    "docker": [
        ("fx-web", "fx-front", "veth232dfb8", "br-53e3b9c918c2"),
        ("fx-web", "fx-v6", "vethd005f6d", "br-265f044fa62d"),
        ("fx-api", "fx-named", "veth197bd5a", "fxbr0"),
        ("fx-def", "bridge", "vethe0794dd", "docker0"),
    ],
    "podman": [
        ("px-web", "px-front", "veth0", "podman1"),
        ("px-web", "px-v6", "veth1", "podman2"),
        ("px-api", "px-named", "veth2", "pxbr0"),
        ("px-def", "podman", "veth3", "podman0"),
    ],
    "docker/audit": [],
}
for d, veths in VETHS.items():
    inspect = {}
    for p in sorted(glob.glob(os.path.join(root, "tests", "fixtures", d, "inspect-*.json"))):
        i = json.load(open(p))
        inspect[i.get("Id", os.path.basename(p))] = i
    ans = {
        "version": fixture(d, "version.json"),
        "containers": fixture(d, "containers.json") or [],
        "networks": fixture(d, "networks.json") or [],
        "libpod": fixture(d, "libpod-networks.json"),
        "inspect": inspect,
        "events": fixture(d, "events.json") or [],
        "veths": veths,
    }
    put("docker", json.dumps(ans, separators=(",", ":")))
    # the list alone, and the events alone: smaller starting points
    put("docker", json.dumps({"containers": ans["containers"], "networks": ans["networks"]}))
    if ans["events"]:
        put("docker", json.dumps({"events": ans["events"]}))

# kernel log lines
lines = []
for rs in sorted(glob.glob(os.path.join(root, "tests", "*.rs"))) + sorted(
    glob.glob(os.path.join(root, "src", "**", "*.rs"), recursive=True)
):
    for l in read(rs).splitlines():
        m = re.search(r'(\S* ?netguard-deny [^"]*)', l)
        if m and "SRC=" in m.group(1):
            lines.append(m.group(1).strip())
put("klog", "\n".join(lines) + "\n")
for l in lines:
    put("klog", l)
    msg = l[l.index("netguard-deny"):]
    put("klog", b"\0" * 16 + b"4,1234,8123456,-;" + msg.encode() + b"\n SUBSYSTEM=net\0")

# nft: JSON listings (nft -j list table) and netlink dumps
for snap in sorted(glob.glob(os.path.join(root, "tests", "snapshots", "*.snap"))):
    body = read(snap).split("---", 2)[-1].strip()
    if body.startswith("{") and '"nftables"' in body:
        put("nft", body)
for rs in sorted(glob.glob(os.path.join(root, "tests", "*.rs"))):
    for t in re.findall(r'r#"(\{"nftables".*?)"#', read(rs), re.S):
        put("nft", t)


# nft's own JSON listings of those batches, as `nft -j list table` prints them: made in a
# network namespace of their own when run as root with nft and ip (else the committed ones stay).
def listings():
    import shutil, subprocess, tempfile
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        print("nft listings: not root or no nft/ip, left as committed", file=sys.stderr)
        return
    ns = "ngfuzz-seed-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for snap in sorted(glob.glob(os.path.join(root, "tests", "snapshots", "plan_snapshots__*_batch.snap"))):
            with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
                f.write(read(snap).split("---", 2)[-1])
                f.flush()
                run = lambda *a: subprocess.run(["ip", "netns", "exec", ns, "nft", *a], capture_output=True, text=True)
                run("flush", "ruleset")
                if run("-j", "-f", f.name).returncode != 0:
                    continue
                for fam in ["inet", "bridge"]:
                    r = run("-j", "list", "table", fam, "netguard")
                    if r.returncode == 0:
                        put("nft", r.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns])


listings()

def attr(ty, payload):
    b = struct.pack("<HH", 4 + len(payload), ty) + payload
    return b + b"\0" * ((4 - len(b) % 4) % 4)


def s(x):
    return x.encode() + b"\0"


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def rec(kind, m):
    return bytes([kind]) + struct.pack("<H", len(m)) + m


T = attr(1, s("netguard"))
chain = T + attr(3, s("forward")) + attr(4 | 0x8000, attr(1, be32(2)) + attr(2, be32(0)))
chain2 = T + attr(3, s("isolate"))
counter = attr(1, s("counter")) + attr(2 | 0x8000, attr(1, be64(1234)) + attr(2, be64(7)))
comment = b"\0" + bytes([len(s("allow web -> api [ng:0123456789abcdef]"))]) + s(
    "allow web -> api [ng:0123456789abcdef]"
)
rule = T + attr(2, s("isolate")) + attr(3, be64(9)) + attr(4 | 0x8000, attr(1 | 0x8000, counter)) + attr(7, comment)


def elem(key, flags=None):
    e = attr(1 | 0x8000, attr(1, key))
    if flags is not None:
        e += attr(3, be32(flags))
    return attr(1 | 0x8000, e)


sets = [
    ("g_web_4", 0, 7, [elem(bytes([10, 10, 0, 11]))]),
    ("g_web_6", 0, 8, [elem(bytes(15) + b"\x11")]),
    ("veths", 0, 41, [elem(b"veth-web1".ljust(16, b"\0"))]),
    ("bridges", 0, (41 << 6) | 41, [elem(b"br-front".ljust(16, b"\0") + b"br-front".ljust(16, b"\0"))]),
    ("bind_4", 0, (41 << 6) | 7, [elem(b"veth-web1".ljust(16, b"\0") + bytes([10, 10, 0, 11]))]),
    ("bind_mac", 0, (41 << 6) | 9, [elem(b"veth-web1".ljust(16, b"\0") + bytes([2, 0x42, 10, 10, 0, 11, 0, 0]))]),
    ("macs", 0, 9, [elem(bytes([2, 0x42, 10, 10, 0, 11]))]),
    ("ports_60869cda6e33d381", 4, 13, [elem(b"\x00\x00", 1), elem(b"\x00\x50"), elem(b"\x00\x51", 1)]),
]
nl = b"\x01" + rec(0, chain) + rec(0, chain2) + rec(1, rule)
for name, flags, key, elems in sets:
    nl += rec(2, T + attr(2, s(name)) + attr(3, be32(flags)) + attr(4, be32(key)))
    nl += rec(3, attr(3 | 0x8000, b"".join(elems)))
put("nft", nl)


def tuple4(src, dst, proto, ports):
    ip = attr(1, bytes(src)) + attr(2, bytes(dst))
    pr = attr(1, bytes([proto]))
    if ports:
        pr += attr(2, struct.pack(">H", ports[0])) + attr(3, struct.pack(">H", ports[1]))
    return attr(1 | 0x8000, attr(1 | 0x8000, ip) + attr(2 | 0x8000, pr))


put("nft", b"\x00\x02" + tuple4([10, 10, 0, 11], [10, 10, 0, 21], 6, (40000, 8080)) + attr(12, be32(7)))
put("nft", b"\x00\x02" + tuple4([10, 10, 0, 11], [10, 10, 0, 21], 1, None))
ip6 = attr(3, bytes(15) + b"\x11") + attr(4, bytes(15) + b"\x21")
put("nft", b"\x00\x0a" + attr(1 | 0x8000, attr(1 | 0x8000, ip6) + attr(2 | 0x8000, attr(1, b"\x11") + attr(2, b"\x00\x35") + attr(3, b"\x00\x35"))))
for t in sorted(os.listdir(out)):
    print(t, len(os.listdir(os.path.join(out, t))), file=sys.stderr)


# nfnetlink answers as received: a dump of two set messages and DONE, in two reads
def nlmsg(ty, flags, seq, payload):
    m = struct.pack("=IHHII", 16 + len(payload), ty, flags, seq, 0) + payload
    return m + b"\0" * ((4 - len(m) % 4) % 4)


gen = b"\x02\x00\x00\x00"
sm = nlmsg(0x0A0A, 2, 5, gen + T + attr(2, s("g_web_4")) + attr(3, be32(0)) + attr(4, be32(7)))
done = nlmsg(3, 2, 5, b"\0\0\0\0")
put("nft", b"\x02\x00" + struct.pack("<I", 5) + rec(0, sm + sm) + rec(0, done))
put("nft", b"\x02\x01" + struct.pack("<I", 5) + rec(0, nlmsg(2, 0, 5, struct.pack("=i", -2))))

# nft, 4 mod 8: datagrams of the admission hold's queue (NFQUEUE packet messages), one
# from an interface index the target names after a bound veth, with an IPv4 header.
def nfq_packet(pid, indev, physin, saddr, daddr, mac):
    a = attr(1, struct.pack(">IHB", pid, 0x0800, 2) + b"\x00")
    a += attr(5, be32(indev)) + attr(6, be32(indev)) + attr(7, be32(physin))
    a += attr(9, struct.pack(">HH", 6, 0) + bytes(mac) + b"\x00\x00")
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]) + bytes(saddr) + bytes(daddr)
    a += attr(10, ip)
    return nlmsg((3 << 8) | 0, 0, 0, struct.pack("=BBH", 2, 0, 0) + a)

put("nft", b"\x04" + nfq_packet(1, 0, 1, [10, 10, 0, 11], [10, 10, 0, 21], [2, 0, 0, 0, 0, 1])
    + nfq_packet(2, 0, 2, [10, 10, 0, 12], [10, 10, 0, 21], [2, 0, 0, 0, 0, 2]))
