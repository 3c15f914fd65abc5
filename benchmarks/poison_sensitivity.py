"""Time the default poison_sensitivity study (81 points) end to end against a plain loop; bar: <= 45 s."""

from study_timing import main

if __name__ == "__main__":
    main("poison_sensitivity", bar_s=45, description=__doc__)
