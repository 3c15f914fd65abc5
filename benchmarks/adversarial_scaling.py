"""Time the default adversarial_scaling study (36 trainings, 180 evaluations) end to end against a plain loop;
bar: <= 60 s."""

from study_timing import main

if __name__ == "__main__":
    main("adversarial_scaling", bar_s=60, description=__doc__)
