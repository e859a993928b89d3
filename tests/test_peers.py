"""benchmarks/peers.py: ours and the peers train the same thing, so their speeds compare like for like."""
import json
import subprocess
import sys

from conftest import ROOT, describe


def test_peers_train_the_same_losses_as_ours(tmp_path):
    """ZeRO-3, torch DDP and torch FSDP2 from the same seed, rows and AdamW: every step's loss within fp32 noise of
    ours with plain data parallelism (seen: 2.4e-7), and a speed and a memory for each."""
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--ranks", "2", "--trials", "1",
                           "--steps", "4", "--preset", "tiny", "--peers", "ours-zero3,ddp,fsdp2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, describe(proc)
    rows = {r["peer"]: r for r in json.loads(out.read_text())["summary"]}
    assert set(rows) == {"ours-dp", "ours-zero3", "ddp", "fsdp2"}
    for r in rows.values():
        assert r["max_loss_diff"] < 1e-5 and r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0, r
    assert "max |loss diff|" in proc.stdout
