"""Running a flow: render its bash script, launch it, resume it, and find and clean up
after runs whose process died."""
