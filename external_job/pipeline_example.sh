#!/usr/bin/env bash
# relion_canon in a scripted RELION pipeline (RELION 3.1, 4.0 and 5.0). Run it from the RELION project
# directory (the one holding default_pipeline.star):
#
#     bash pipeline_example.sh Select/job012/particles.star
#
# 1. adds relion_canon_external as an External job on those particles and runs it (in-plane angle priors,
#    defocus, weights, outlier scores; particles_selected.star without the junk);
# 2. adds a 2D classification of the selected particles that searches psi only near relion_canon's angle
#    (--sigma_psi in "Additional arguments") and runs it.
#
# Every setting below can be overridden from the environment, e.g.
#     EPOCHS=10 GPU=0 THREADS=8 DIAMETER=180 bash pipeline_example.sh Select/job012/particles.star
# Each step waits for its job to finish; the script stops at the first job that does not succeed.
set -euo pipefail

PARTICLES=${1:?usage: pipeline_example.sh PARTICLES_STAR   (run from the RELION project directory)}
EXE=${EXE:-relion_canon_external}   # or its full path; the name must contain "relion_" (RELION then adds --pipeline_control)
THREADS=${THREADS:-4}               # "Number of threads" (--j)
EPOCHS=${EPOCHS:-}                  # empty: relion_canon chooses from the number of particles
GPU=${GPU:-}                        # empty: automatic (honours CUDA_VISIBLE_DEVICES); 0; 0,1; cpu
OUTLIER_THRESHOLD=${OUTLIER_THRESHOLD:-}   # empty: the job's default
EXTRA_ARGS=${EXTRA_ARGS:-}          # the External job's "Additional arguments", e.g. --per_class yes
CLASSES=${CLASSES:-1}               # Class2D: number of classes
ITER=${ITER:-25}                    # Class2D: iterations
DIAMETER=${DIAMETER:-200}           # Class2D: mask diameter (Å)
SIGMA_PSI=${SIGMA_PSI:-5}           # Class2D: psi is searched within ±3 × this (degrees) of rlnAnglePsiPrior

if [ ! -f default_pipeline.star ]; then
    echo "No default_pipeline.star here: run this from a RELION project directory." >&2
    exit 1
fi

# The process relion_pipeliner added last: the last row of the data_pipeline_processes table.
newest_job() {
    awk '/^data_/ {in_processes = ($1 == "data_pipeline_processes"); next}
         in_processes && $1 ~ /\/job[0-9]+\/$/ {job = $1}
         END {print job}' default_pipeline.star
}

# Run one scheduled job and wait for it; RELION decides by the exit file the job leaves in its folder.
run_job() {
    relion_pipeliner --RunJobs "$1" --sec_wait_after 1
    if [ ! -f "$1RELION_JOB_EXIT_SUCCESS" ]; then
        echo "$1 did not succeed; see $1run.err" >&2
        exit 1
    fi
}

# 1. relion_canon as an External job. Param labels become --label value; an empty value means the default.
relion_pipeliner --addJob External --addJobOptions "fn_exe == $EXE;in_part == $PARTICLES;\
param1_label == mode;param1_value == train;\
param2_label == epochs;param2_value == $EPOCHS;\
param3_label == outlier_z;param3_value == $OUTLIER_THRESHOLD;\
param4_label == gpu;param4_value == $GPU;\
nr_threads == $THREADS;other_args == $EXTRA_ARGS"
EXTERNAL=$(newest_job)
echo "relion_canon: $EXTERNAL"
run_job "$EXTERNAL"

# 2. Class2D on the selected particles with local in-plane searches around relion_canon's angles.
relion_pipeliner --addJob Class2D --addJobOptions "fn_img == ${EXTERNAL}particles_selected.star;\
nr_classes == $CLASSES;nr_iter == $ITER;particle_diameter == $DIAMETER;nr_threads == $THREADS;\
other_args == --sigma_psi $SIGMA_PSI"
CLASS2D=$(newest_job)
echo "Class2D: $CLASS2D"
run_job "$CLASS2D"

echo "Done: $EXTERNAL (particles.star, particles_selected.star, logfile.pdf) -> $CLASS2D"
