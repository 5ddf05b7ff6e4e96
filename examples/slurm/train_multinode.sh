#!/bin/bash
# Multi-node DDP training with SLURM: one task per GPU; Lightning reads the ranks from the SLURM variables.
#
#   sbatch examples/slurm/train_multinode.sh cityscapes_ocr_hrnet_w48_contrast_mem
#   sbatch --nodes=4 examples/slurm/train_multinode.sh my_config.yaml --data.init_args.batch_size=1
#
# CONFIG is a bundled config's name (`pixcontrast configs` lists them) or a YAML file. Arguments after the config
# go to `pixcontrast fit` unchanged. Batch size is per GPU: the global batch is
# batch_size x GPUs per node x nodes, so divide the paper's batch size accordingly.
# Restarts resume: a requeued job (time limit, preemption) continues from the checkpoint that Lightning writes
# on SIGUSR1 (hpc_ckpt_*.ckpt in RUN_DIR); a job started again by hand continues from last.ckpt.
#SBATCH --job-name=pixcontrast
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out

set -euo pipefail

CONFIG=${1:?usage: sbatch train_multinode.sh CONFIG [pixcontrast fit arguments]}
shift
RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-pixcontrast}}
mkdir -p "$RUN_DIR/checkpoints" "$RUN_DIR/tmp"

# Checkpoints are written to a temporary file and moved onto their name when complete. The move is atomic
# only within one filesystem, so keep the temporary files next to the checkpoints (not on a node-local /tmp).
export TMPDIR="$RUN_DIR/tmp"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

# Under SLURM, Lightning itself resumes from the newest hpc_ckpt_*.ckpt when there is one; otherwise use last.ckpt.
RESUME=()
if ! compgen -G "$RUN_DIR/hpc_ckpt_*.ckpt" > /dev/null && [[ -f "$RUN_DIR/checkpoints/last.ckpt" ]]; then
    RESUME=(--ckpt_path last)
fi

srun pixcontrast fit --config "$CONFIG" \
    --trainer.accelerator=gpu \
    --trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    --trainer.num_nodes="${SLURM_NNODES}" \
    --trainer.strategy=ddp \
    --trainer.sync_batchnorm=true \
    --trainer.default_root_dir="$RUN_DIR" \
    --checkpoint.dirpath="$RUN_DIR/checkpoints" \
    ${RESUME[@]+"${RESUME[@]}"} "$@"
