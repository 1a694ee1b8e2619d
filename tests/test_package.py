import subprocess
import sys


def test_importing_prismrl_stays_light():
    code = "import sys, prismrl, prismrl.lightning_modules; print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'lightning', 'transformers', 'peft'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_console_script_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "prismrl.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("fit", "validate", "test", "predict"):
        assert command in out
