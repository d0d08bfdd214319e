module gocontextbench

go 1.19
