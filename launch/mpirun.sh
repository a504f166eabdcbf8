#!/usr/bin/env bash
# mpirun with the settings dsi needs on a workstation or container: shared-memory transport,
# oversubscription (more ranks than cores is fine: idle ranks sleep), root allowed, and no
# binding (with np <= 2 Open MPI pins each rank to one core, so a worker's model.threads would
# share it).
# Usage: launch/mpirun.sh -np 6 build/dsi run --config configs/synthetic.yaml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none "$@"
