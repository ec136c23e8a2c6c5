"""A pod's /etc/resolv.conf from `dnsPolicy` and `dnsConfig`, kubelet's way.

There is no cluster DNS at the edge, so `ClusterFirst` (Kubernetes' default) and
`ClusterFirstWithHostNet` resolve like `Default`: the node's resolv.conf, which the
runtime binds into every container unless the pod says otherwise. A pod with a
`dnsConfig` gets a file of its own: the node's nameservers, searches and options with the
pod's merged over them (nameservers and searches appended, without duplicates, at most 3
and 32 as the resolver reads them; options replaced by name), or, with `dnsPolicy: None`,
the pod's alone. Pure: the caller reads the node's file and writes the result.
"""

from __future__ import annotations

from shared.pods import PodSpec

MAX_NAMESERVERS = 3  # glibc's MAXNS
MAX_SEARCHES = 32


def needs_own(spec: PodSpec) -> bool:
    """Whether the pod needs a resolv.conf of its own (else it gets the node's)."""
    return spec.dns_config is not None or spec.dns_policy == "None"


def resolv_conf(spec: PodSpec, node_text: str) -> str:
    """The pod's resolv.conf (`node_text`: the node's, read by the caller)."""
    servers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    if spec.dns_policy != "None":
        for line in node_text.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) < 2:
                continue
            if words[0] == "nameserver":
                servers.append(words[1])
            elif words[0] in ("search", "domain"):
                searches = list(words[1:])  # the last search/domain line wins
            elif words[0] == "options":
                for opt in words[1:]:
                    name, sep, value = opt.partition(":")
                    options[name] = value if sep else None
    cfg = spec.dns_config
    if cfg is not None:
        servers += cfg.nameservers
        searches += cfg.searches
        for o in cfg.options:
            options[o.name] = o.value
    servers = list(dict.fromkeys(servers))[:MAX_NAMESERVERS]
    searches = list(dict.fromkeys(searches))[:MAX_SEARCHES]
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(n if v is None else f"{n}:{v}"
                                           for n, v in options.items()))
    return "\n".join(lines) + "\n"
