"""The iptables state real nodes add to the host, found and removed (IPv4 and IPv6).

Three things add chains:
- the CNI bridge plugin's `ipMasq`: per pod a nat chain `CNI-<hash>`, jumped to from POSTROUTING by a rule whose
  comment names the network (`name: "r1-node-N"`). Only a CNI DEL removes them, and pods killed at teardown never
  get one, so teardown removes the network's rules and chains itself;
- kubelet: `KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT` and their jumps;
- kube-proxy: its `KUBE-*` service chains (`kube-proxy --cleanup` removes them; this module removes what is left).

- kube-router's NetworkPolicy firewall: `KUBE-ROUTER-*`, `KUBE-NWPLCY-*` and `KUBE-POD-FW-*` chains, and ipsets
  `KUBE-SRC-*`, `KUBE-DST-*` and `TMP-*` (removed once no chain refers to them).

The `KUBE-*` chains are shared by every kubelet on the host, so they go only when the host's last real node does.
The dev cluster assumes the host is not itself a Kubernetes node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

TOOLS = ("iptables", "ip6tables")
_COMMENT = re.compile(r'--comment "name: \\"([^\\"]+)\\"')


@dataclass
class Table:
    name: str
    chains: set[str] = field(default_factory=set)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, the rule's spec after "-A CHAIN ")


def _dump(tool: str) -> list[Table]:
    if not shutil.which(f"{tool}-save"):
        return []
    out = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=30)
    tables: list[Table] = []
    for line in out.stdout.splitlines():
        if line.startswith("*"):
            tables.append(Table(line[1:]))
        elif line.startswith(":") and tables:
            tables[-1].chains.add(line[1:].split()[0])
        elif line.startswith("-A ") and tables:
            chain, _, spec = line[3:].partition(" ")
            tables[-1].rules.append((chain, spec))
    return tables


def _jump(spec: str) -> str | None:
    m = re.search(r"(?:^| )-[jg] (\S+)", spec)
    return m.group(1) if m else None


def _doomed(table: Table, networks: set[str], kube: bool) -> set[str]:
    """Chains to remove: those the networks' commented rules jump to (and what those reach), and with kube the
    KUBE-* chains."""
    doomed = {c for c in table.chains if kube and c.startswith("KUBE-")}
    doomed |= {j for chain, spec in table.rules if (m := _COMMENT.search(spec)) and m.group(1) in networks
               and (j := _jump(spec)) and j in table.chains}
    grew = True
    while grew:  # chains reached only through doomed ones
        more = {j for chain, spec in table.rules if chain in doomed and (j := _jump(spec)) in table.chains
                and j.startswith(("CNI-", "KUBE-"))} - doomed
        doomed |= more
        grew = bool(more)
    return doomed


def _plan(table: Table, networks: set[str], kube: bool) -> tuple[list[str], set[str]]:
    doomed = _doomed(table, networks, kube)
    lines = [f"-D {chain} {spec}" for chain, spec in table.rules
             if chain not in doomed and (_jump(spec) in doomed
                                         or ((m := _COMMENT.search(spec)) and m.group(1) in networks))]
    return lines, doomed


_IPSET = re.compile(r"^(KUBE-SRC-|KUBE-DST-|TMP-)[A-Z2-7]{16}$")  # kube-router's: prefix + 16 base32 characters


def _ipsets() -> list[str]:
    if not shutil.which("ipset"):
        return []
    out = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, timeout=30)
    return [n for n in out.stdout.split() if _IPSET.match(n)]


def leftovers(networks: set[str], kube: bool) -> list[str]:
    """What of these networks (and with kube, of kubelet and kube-proxy) is still in the host's tables."""
    out = []
    for tool in TOOLS:
        for t in _dump(tool):
            lines, doomed = _plan(t, networks, kube)
            out += [f"{tool} {t.name} chain {c}" for c in sorted(doomed)]
            out += [f"{tool} {t.name} rule {line[3:]}" for line in lines]
    return out + ([f"ipset {n}" for n in _ipsets()] if kube else [])


def remove(networks: set[str], kube: bool) -> list[str]:
    """Remove the networks' rules and chains (and with kube, every KUBE-* chain); return the errors."""
    errors = []
    for tool in TOOLS:
        script = []
        for t in _dump(tool):
            lines, doomed = _plan(t, networks, kube)
            if lines or doomed:
                script += [f"*{t.name}", *lines, *(f"-F {c}" for c in sorted(doomed)),
                           *(f"-X {c}" for c in sorted(doomed)), "COMMIT"]
        if script:
            r = subprocess.run([f"{tool}-restore", "--noflush"], input="\n".join(script) + "\n",
                               capture_output=True, text=True, timeout=30)
            if r.returncode:
                errors.append(f"{tool}-restore: {r.stderr.strip()}")
    for name in _ipsets() if kube else []:  # after the chains whose rules match them
        r = subprocess.run(["ipset", "destroy", name], capture_output=True, text=True, timeout=30)
        if r.returncode:
            errors.append(f"ipset destroy {name}: {r.stderr.strip()}")
    return errors
