#!/usr/bin/env bash
# Install MONAI Label 0.8.5 into the current Python environment, on top of the bundle's requirements
# (install those first, see docs/README.md). Uses the `python` on PATH, or $PYTHON.
#
# `pip install monailabel==0.8.5` cannot resolve next to numpy 2: two of its dependencies
# (numpymaxflow, pydicom-seg) declare numpy < 2. So monailabel and pydicom-seg go in with --no-deps,
# and their runtime dependencies are installed here by name, pinned to the versions this app was
# tested with and constrained by requirements.txt (numpy, monai and friends stay as they are).
# Left out on purpose: numpymaxflow (scribbles), sam2 (SAM2 models; it would pull another torch),
# ninja and scikit-learn, none of which the classification path imports.
set -euo pipefail
python=${PYTHON:-python}
root=$(cd "$(dirname "$0")/../.." && pwd)
pip=("$python" -m pip install --disable-pip-version-check -q)

"${pip[@]}" -c "$root/requirements.txt" \
    pydicom==2.4.4 dicomweb-client==0.59.3 SimpleITK==2.5.7 pynetdicom==2.1.1 pynrrd==1.1.3 \
    fastapi==0.165.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
    python-multipart==0.0.34 httpx==0.29.0 requests==2.34.2 requests-toolbelt==1.0.0 urllib3==2.8.0 \
    schedule==1.2.2 timeloop==1.0.2 expiringdict==1.2.2 expiring-dict==1.1.2 cachetools==8.0.3 \
    watchdog==7.1.1 filelock==4.3.2 passlib==1.7.4 pyjwt==2.15.1 bcrypt==5.0.0 shapely==2.2.0 \
    scikit-image==0.26.0 psutil==7.2.2 google-auth==2.63.1 girder-client==5.0.21 pyyaml==6.0.3
# pydicom 3 breaks pydicom-seg 0.4.1 (pinned above: pydicom 2.4.4, dicomweb-client 0.59.3, the last
# release that accepts it). --no-warn-conflicts: the numpy < 2 and left-out declarations are known.
"${pip[@]}" --no-deps --no-warn-conflicts monailabel==0.8.5 pydicom-seg==0.4.1

# monailabel.transform.post imports torchvision (for image-grid helpers the classification path never
# calls). Only a torchvision built for the installed torch loads; never let pip replace torch for it.
if "$python" -c "import torchvision.utils" 2>/dev/null; then
    echo "torchvision: $("$python" -c 'import torchvision; print(torchvision.__version__)') already loads, kept"
else
    torchvision=$("$python" -c 'import torch; major, minor = torch.__version__.split("+")[0].split(".")[:2]; print(f"0.{int(minor) + 15}")' )
    torch_version=$("$python" -c 'import torch; print(torch.__version__)')
    if "${pip[@]}" --no-deps "torchvision==$torchvision.*" && "$python" -c "import torchvision.utils" 2>/dev/null; then
        echo "torchvision: installed $torchvision.* (built for torch $torch_version)"
    else
        "$python" -m pip uninstall -q -y torchvision >/dev/null 2>&1 || true
        echo "torchvision: no build of $torchvision.* that loads with torch $torch_version was found, so none is installed;"
        echo "  install the one matching your torch build from where your torch came from, or"
        echo "  'monailabel start_server' stops with an ImportError (see docs/README.md, MONAI Label)."
    fi
fi
"$python" -c "import monailabel, monailabel.interfaces.app, monailabel.tasks.infer.basic_infer; print('monailabel', monailabel.__version__, 'installed')"
