#!/usr/bin/env bash
# The paper's 10 / 50 / 100 % training subsets of Oxford-IIIT Pet, nested (same seed), each with its
# own StyleGAN records: three runs of launch/data_oxford_pets.flags.
# Run: launch/data_oxford_pets_subsets.sh PATH_TO_OXFORD_PETS [SEED]
# Cost: three conversions of the release, a few minutes on 2 cores (estimated, not timed here).
# Results: tfrecords/oxford_pets_{0.1,0.5,1.0}/records/ and .../reports/ (split_train.txt: the
# exact files of each subset).
set -euo pipefail
src=${1:?usage: $0 PATH_TO_OXFORD_PETS [SEED]}
seed=${2:-0}
for subset in 0.1 0.5 1.0; do
  python -m tfpets.launch --flagfile="$(dirname "$0")/data_oxford_pets.flags" \
    --data="oxford_pets:${src}" --subset="${subset}" --seed="${seed}" \
    --workdir="tfrecords/oxford_pets_${subset}"
done
