# Shared by the command-line test scripts (cli_test.sh, sweep_test.sh), sourced after they set
# case_name, dsi and src: a temp folder removed on exit, mpirun with the settings tests need
# and a hard time limit (MPI_CASE_TIMEOUT seconds), and fail() that shows the output.
mpirun=${MPIRUN:-mpirun}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mpi() { timeout "${MPI_CASE_TIMEOUT:-45}" "$mpirun" --oversubscribe --mca btl self,vader \
          --mca btl_vader_single_copy_mechanism none "$@"; }
fail() { echo "FAILED: $*"; echo "--- output:"; cat "$tmp/out"; exit 1; }
