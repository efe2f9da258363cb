"""No noise at start (issue 10, item 7): bitsandbytes is imported only when a quantised model or
an 8-bit optimiser needs it, and `spare-train` prints no third-party tip a user cannot act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bitsandbytes_waits_until_it_is_needed():
    out = python(
        "import sys\n"
        "from spare_train.cli import main\n"
        "for argv in (['data', 'convert', '--help'], ['score', '--help'], ['export', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "import peft, transformers\n"
        "from spare_train.prm.scoring import load_prm\n"
        "print('imported:', 'bitsandbytes' in sys.modules)\n"
        "print('available:', transformers.utils.is_bitsandbytes_available())\n"
        "import bitsandbytes.optim\n"
        "print('usable:', hasattr(bitsandbytes.optim, 'AdamW8bit'))\n"
    ).stdout
    assert "imported: False" in out and "available: True" in out and "usable: True" in out


def test_spare_train_fit_prints_no_lightning_cli_warning():
    err = python(
        "import sys\n"
        "sys.argv = ['spare-train', 'fit', '--config', 'recipes/prm/tiny.yaml', '--print_config']\n"
        "from spare_train.cli import main\n"
        "sys.exit(main())\n"
    ).stderr
    assert "args parameter" not in err and "Traceback" not in err


def test_lightning_tips_and_notices_are_silenced(tmp_path, capfd):
    """A Trainer built the way `spare-train fit` builds it shows no advert and no logger notice."""
    import warnings

    from lightning.pytorch import Trainer

    from spare_train.quiet import silence_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_third_party()
        Trainer(accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    err = capfd.readouterr().err
    assert "💡 Tip" not in err and not [w for w in caught if "tensorboardX" in str(w.message)]


def test_lightnings_save_notice_about_weights_only_is_silenced(caplog):
    """Lightning logs "`weights_only` was not set, defaulting to `False`" at every full save: it
    reads as if loading were unsafe (our loads are weights_only=True); other messages pass."""
    import logging

    from spare_train.quiet import silence_third_party

    silence_third_party()
    log = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("`weights_only` was not set, defaulting to `False`.")
        log.info("Restoring states from the checkpoint path at x.ckpt")
    assert [r.getMessage() for r in caplog.records] == ["Restoring states from the checkpoint path at x.ckpt"]
