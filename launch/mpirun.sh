#!/usr/bin/env bash
# mpirun with the settings dsi needs on a workstation or container: shared-memory transport,
# oversubscription (more ranks than cores is fine: idle ranks sleep), root allowed.
# Usage: launch/mpirun.sh -np 6 build/dsi run --config configs/synthetic.yaml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none "$@"
