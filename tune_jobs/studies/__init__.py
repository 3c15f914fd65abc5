"""The built-in studies: each module here declares one ``STUDY`` and is named after it.

``python -m tune_jobs NAME`` finds them by file name (:func:`tune_jobs.study.load_study`);
a new module here is a new built-in study.
"""
