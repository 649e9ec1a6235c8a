#!/usr/bin/env python3
# Splits a CPU profile of TestProfileFetch into the parts of a fetch
# (docs/benchmarks.md, "Where a fetch's CPU goes"): each sample goes to the
# first part, in the order below, one of whose patterns a frame of its
# stack matches; syscalls and allocation are read off the leaf frames.
#   python3 cpuaccount.py /tmp/kb.cpu REQUESTS
import re, subprocess, sys
prof, reqs = sys.argv[1], int(sys.argv[2])
out = subprocess.run(["go","tool","pprof","-traces",prof],capture_output=True,text=True).stdout
traces=[]; cur=None
for line in out.splitlines():
    if line.startswith("-----------+"):
        if cur: traces.append(cur)
        cur=None; continue
    m=re.match(r'\s*([\d.]+)(ms|s|us|µs)\s+(\S.*)$', line)
    if m:
        v=float(m.group(1))*{'ms':1e3,'s':1e6,'us':1,'µs':1}[m.group(2)]
        cur=[v,[m.group(3).strip()]]
    elif cur and line.strip():
        cur[1].append(line.strip())
if cur: traces.append(cur)
owners=[
 ("GC and heap", r'runtime\.(gcBgMarkWorker|bgsweep|bgscavenge|gcAssist|markroot|gcDrain)'),
 ("profiler/test harness", r'(runtime/pprof|testing\.|httptest\.\(\*Server\)\.Close|jwtissuer)'),
 ("access log line + metrics", r'(vaultapi\.\(\*API\)\.accessLog\.func1\.1|log/slog|vaultapi\.\(\*Metrics\))'),
 ("token check (jwtauth)", r'jwtauth\.'),
 ("keyring unwrap (AES-GCM)", r'(broker\.\(\*Keyring\)|localkek|crypto/)'),
 ("pgx: encode, write, read, scan", r'(jackc/pgx|jackc/pgconn|pgstore\.)'),
 ("group-commit hand-offs", r'broker\.\(\*groupCommit'),
 ("JSON answer", r'(encoding/json|vaultapi\.writeJSON|vaultapi\.keyBody)'),
 ("routing and middleware (chi, context, request id)", r'(go-chi|vaultapi\.|context\.|broker\.)'),
 ("HTTP: read, parse, write (net/http)", r'(net/http|net/textproto|bufio)'),
 ("scheduler, netpoll, wake-ups", r'runtime\.(schedule|findRunnable|mcall|park_m|netpoll|goexit0|mstart|notesleep|stopm|startm|wakep|goready|ready)'),
]
leafs=[("syscall", r'(syscall|Syscall|futex|epollwait|runtime\.usleep|runtime\.write1|runtime\.read)'),
       ("alloc", r'runtime\.(mallocgc|newobject|makeslice|growslice|newarray|concatstring|slicebytetostring|rawstring)')]
tot={}; allv=0
for v,stack in traces:
    allv+=v
    owner="other runtime"
    for name,pat in owners:
        if any(re.search(pat,f) for f in stack): owner=name; break
    kind="cpu"
    for name,pat in leafs:
        if any(re.search(pat,f) for f in stack[:12]): kind=name; break
    tot.setdefault(owner,{}).setdefault(kind,0); tot[owner][kind]+=v
print(f"total {allv/1e3:.0f} ms over {reqs} requests = {allv/reqs:.1f} µs/req")
print("| part | µs/req | of which syscalls | of which allocation |")
for o,d in sorted(tot.items(), key=lambda x:-sum(x[1].values())):
    s=sum(d.values())
    print(f"| {o} | {s/reqs:.1f} | {d.get('syscall',0)/reqs:.1f} | {d.get('alloc',0)/reqs:.1f} |")
