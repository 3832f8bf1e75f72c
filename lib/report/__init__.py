"""The report part: what the runs did, scored and shown; it reads run folders and never trains.

    evaluate   test predictions from each run's best checkpoint, the submission file, evaluation.json
    results    the report's tables and sentences, read from the runs' records and the registry
    figures    every figure of the notebooks and the report
    explain    what the networks learned: filters before and after, feature maps, Grad-CAM
    render     the executed report notebook to HTML and PDF
"""
