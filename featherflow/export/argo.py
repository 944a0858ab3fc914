"""A flow as an Argo CronWorkflow (YAML). Placeholder while the Airflow target is built."""


def build(flow, tasks, schedule, tasks_dir, image, plan):
    raise NotImplementedError
