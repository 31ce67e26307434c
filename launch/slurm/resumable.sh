# Sourced by the sbatch scripts (bash): run one training so that the job survives its time limit and
# preemption. Not a script of its own.
#
#   run_resumable COMMAND...    run COMMAND (train.py --resume=auto ..., under torchrun or srun) and wait for it
#
# Signals, and why the script treats them differently:
#   USR1  Slurm sends it to this shell alone, 120 s before the time limit (#SBATCH --signal=B:USR1@120; the B:
#         keeps it away from the training processes until the line below forwards it to COMMAND). The training
#         checkpoints and stops; then the job requeues itself, and its next start resumes from that checkpoint.
#   TERM  scancel, `scontrol requeue`, preemption and the time limit itself: Slurm sends it to every process of
#         the job (the training included), so it is not forwarded a second time; this shell waits for the
#         training to stop. Whether the job comes back is Slurm's decision (requeue, preemption) or yours
#         (scancel): the script never requeues after TERM. Slurm kills what is left KillWait seconds later
#         (30 by default; `scontrol show config | grep KillWait`).
# A training that fails on its own (exit code not 0, no signal) is not requeued: it would fail again.

run_resumable() {
    local stop="" rc=0 child
    trap 'stop=USR1; kill -USR1 "$child" 2>/dev/null' USR1
    trap 'stop=${stop:-TERM}' TERM
    echo "=== job ${SLURM_JOB_ID:-?} (start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))) on $(hostname) at $(date '+%F %T'): $*"
    "$@" &
    child=$!
    while true; do  # a trapped signal interrupts `wait`: wait again until the training has really exited
        wait "$child"
        rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [ "$stop" = USR1 ]; then
        echo "=== $(date '+%F %T'): stopped before the time limit (exit code $rc); requeueing job $SLURM_JOB_ID," \
             "its next start resumes from the checkpoint"
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            echo "error: scontrol requeue $SLURM_JOB_ID failed: submit the same sbatch command again, it resumes" \
                 "from the checkpoint" >&2
            return 1
        fi
        return 0
    fi
    if [ -n "$stop" ]; then
        echo "=== $(date '+%F %T'): stopped by Slurm (TERM: scancel, scontrol requeue, preemption or the time" \
             "limit; exit code $rc). A requeued job resumes from the last checkpoint"
        return "$rc"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "error: the training exited with code $rc, so job ${SLURM_JOB_ID:-?} is not requeued (it would fail" \
             "again): fix the error above, then submit the same command again; it continues from the last" \
             "checkpoint" >&2
    fi
    return "$rc"
}

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2  # the clone: trained/ and the relative paths are there
PYTHON=${PYTHON:-python}  # the environment is the submitter's (sbatch exports it): activate the venv first
