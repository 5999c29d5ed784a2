# The top of the PEX's __main__.py (scripts/build-pex, pex --preamble-file), run before pex's
# own bootstrap in every process that runs it.
#
# Where PEX_ROOT cannot be written (a read-only HOME) pex falls back to a temporary root and
# warns (pex/pex_root.py, ensure_writeable). It then unpacks itself there and runs the unpacked
# copy, passing the fallback on in $_PEX_ROOT_FALLBACK (pex_root.preserve_fallback), and that
# copy warns again about the same directory. Only the first process says it.
import os as _os
import warnings as _warnings

if _os.environ.get("_PEX_ROOT_FALLBACK"):
    _warnings.filterwarnings("ignore", message="PEX_ROOT is configured as ")
del _os, _warnings
