#!/usr/bin/env bash
# Builds the CUDA variant of `ditlens` on a machine with no GPU and assembles a self-contained
# folder, dist/ditlens-cuda/, that runs on a GPU host with only the NVIDIA driver installed.
#
# What it does (Debian 12, x86_64):
#  1. installs the system packages it needs (build-essential, python3-pip) when they are missing;
#  2. downloads the CUDA 13.0 compiler (nvcc), headers and libraries as NVIDIA's PyPI
#     wheels (pinned versions) and unpacks them under $CARGO_TARGET_DIR/cuda-toolkit;
#  3. makes a link-time stub of the driver library (libcuda.so.1); the real one comes from the
#     GPU host's driver and is never shipped;
#  4. runs `cargo build --release -p ditlens --features cuda` with kernels for CUDA_COMPUTE_CAP
#     (default 90: H100/H200) and an rpath of $ORIGIN/lib;
#  5. copies the stripped binary and the CUDA libraries it links into dist/ditlens-cuda/.
#
# Environment: CARGO_TARGET_DIR (default: target-cuda in the repository), CUDA_COMPUTE_CAP
# (default 90), JOBS (cargo -j and parallel nvcc runs, default 2), NICE (niceness, default 19).
# Needs a Rust toolchain (cargo) on PATH and the network reach of crates.io and PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
JOBS="${JOBS:-2}"
NICE="${NICE:-19}"
TK="$CARGO_TARGET_DIR/cuda-toolkit"
CUDA_ROOT_DIR="$TK/nvidia/cu13"
LINK_DIR="$TK/link"
DIST="$ROOT/dist/ditlens-cuda"

# CUDA 13.0 from NVIDIA's wheels (13.x is the first series whose wheels carry nvcc itself).
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
)
step() { printf '\n== %s\n' "$*"; }

step "system packages"
missing=()
command -v g++ >/dev/null || missing+=(build-essential)
command -v strip >/dev/null || missing+=(binutils)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain first" >&2; exit 1; }

step "CUDA toolkit wheels -> $TK"
mkdir -p "$TK/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TK/wheels" "${WHEELS[@]}"
if [[ "$(cat "$TK/unpacked" 2>/dev/null)" != "${WHEELS[*]}" ]]; then
  rm -rf "$TK/nvidia"
  for w in "${WHEELS[@]}"; do
    name="${w%%==*}"
    version="${w##*==}"
    python3 -m zipfile -e "$TK/wheels/${name//-/_}-$version-"*.whl "$TK"
  done
  chmod +x "$CUDA_ROOT_DIR"/bin/* "$CUDA_ROOT_DIR"/nvvm/bin/*
  echo "${WHEELS[*]}" >"$TK/unpacked"
fi
"$CUDA_ROOT_DIR/bin/nvcc" --version | tail -2

step "link directory (unversioned names, driver stub) -> $LINK_DIR"
rm -rf "$LINK_DIR"
mkdir -p "$LINK_DIR"
for lib in cudart cublas cublasLt curand nvrtc; do
  real="$(cd "$CUDA_ROOT_DIR/lib" && ls "lib$lib.so."* | grep -v '\.alt\.' | sort | head -n1)"
  ln -s "$CUDA_ROOT_DIR/lib/$real" "$LINK_DIR/lib$lib.so"
done
# Every driver entry point cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34).
CUDARC_SRC="$(cargo metadata --format-version 1 --manifest-path "$ROOT/Cargo.toml" --features ditlens/cuda \
  | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" \
  | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
  | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$LINK_DIR/cuda_stub.c"
gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$LINK_DIR/libcuda.so" "$LINK_DIR/cuda_stub.c"

step "cargo build --release -p ditlens --features cuda (compute capability $CUDA_COMPUTE_CAP)"
export PATH="$CUDA_ROOT_DIR/bin:$PATH"
export CUDA_ROOT="$CUDA_ROOT_DIR" CUDA_HOME="$CUDA_ROOT_DIR"
unset CUDA_PATH CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
# candle-kernels compiles its .cu files with half the cores unless told otherwise.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$JOBS}"
# Link flags for the binary only (dependencies build as they would with plain cargo build):
# the link directory above, and an rpath of $ORIGIN/lib, as DT_RPATH (not RUNPATH) so that it
# also covers the libraries' own dependencies and wins over an LD_LIBRARY_PATH set for another
# CUDA version.
start=$(date +%s)
nice -n "$NICE" cargo rustc --release -p ditlens --bin ditlens --features cuda -j "$JOBS" \
  --manifest-path "$ROOT/Cargo.toml" -- \
  -L "native=$LINK_DIR" \
  -C "link-arg=-Wl,-rpath-link,$CUDA_ROOT_DIR/lib" \
  -C link-arg=-Wl,--disable-new-dtags \
  -C 'link-arg=-Wl,-rpath,$ORIGIN/lib'
echo "build took $(( $(date +%s) - start )) s"

step "bundle -> $DIST"
rm -rf "$DIST"
mkdir -p "$DIST/lib"
cp "$CARGO_TARGET_DIR/release/ditlens" "$DIST/ditlens"
strip --strip-all "$DIST/ditlens"
# Exactly the CUDA libraries the binary loads (cudarc: cuBLAS, cuRAND; candle's kernels: the
# CUDA runtime; cuBLAS: cuBLASLt), as the loader resolves them from the toolkit.
LD_LIBRARY_PATH="$CUDA_ROOT_DIR/lib" ldd "$CARGO_TARGET_DIR/release/ditlens" \
  | awk -v dir="$CUDA_ROOT_DIR/lib/" 'index($3, dir) == 1 { print $3 }' \
  | while read -r lib; do cp "$lib" "$DIST/lib/"; done
[[ -n "$(ls "$DIST/lib")" ]] || { echo "no CUDA library found to bundle" >&2; exit 1; }
cp "$(find "$TK"/nvidia_cuda_runtime-*.dist-info -name License.txt | head -n1)" \
  "$DIST/lib/NVIDIA-CUDA-LICENSE.txt"
cat >"$DIST/README.txt" <<EOF
ditlens, CUDA build (CUDA 13.0, kernels for compute capability $CUDA_COMPUTE_CAP).

Run ./ditlens as usual (the window, or a command: ./ditlens --help). lib/ holds the CUDA
libraries it needs (cuBLAS, cuBLASLt, cuRAND, the CUDA runtime); the binary finds them
through its rpath (\$ORIGIN/lib), so no LD_LIBRARY_PATH is needed.

The host needs only the NVIDIA driver, release 580 or newer (CUDA 13), which provides
libcuda.so.1, and glibc 2.35 or newer (Debian 12, Ubuntu 22.04 and later). Without
libcuda.so.1 the binary does not start.

Device: CUDA device 0 when there is one, otherwise the CPU (with a message on stderr).
DITLENS_DEVICE=cpu forces the CPU; DITLENS_DEVICE=cuda fails with an error when CUDA is unusable.
The CUDA libraries in lib/ are NVIDIA's, under the licence in lib/NVIDIA-CUDA-LICENSE.txt.
EOF

step "check"
echo "libraries the bundle does not resolve itself:"
ldd "$DIST/ditlens" | grep -v "$DIST/lib/" | grep -vE 'lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so|ld-linux|linux-vdso' || true
du -sh "$DIST"
