# sdar_detect_gpu(<found_var> <why_var>): <found_var> is TRUE when this machine has an NVIDIA
# driver that reports at least one GPU, i.e. when CUDA kernels built here could run here.
# <why_var> says what was found. Runs a small C++ probe (cuda_driver_probe.cpp, no CUDA toolkit
# needed) on every configure, so a driver installed later is seen by the next build.
function(sdar_detect_gpu found_var why_var)
  if(CMAKE_CROSSCOMPILING)
    set(${found_var} FALSE PARENT_SCOPE)
    set(${why_var} "cross-compiling: the GPU of the target cannot be probed from here" PARENT_SCOPE)
    return()
  endif()
  unset(SDAR_GPU_PROBE_RUN CACHE)
  unset(SDAR_GPU_PROBE_COMPILED CACHE)
  try_run(SDAR_GPU_PROBE_RUN SDAR_GPU_PROBE_COMPILED
          ${CMAKE_BINARY_DIR}/sdar_gpu_probe ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/cuda_driver_probe.cpp
          LINK_LIBRARIES ${CMAKE_DL_LIBS}
          RUN_OUTPUT_VARIABLE probe_output)
  if(NOT SDAR_GPU_PROBE_COMPILED)
    set(${found_var} FALSE PARENT_SCOPE)
    set(${why_var} "the GPU probe did not compile" PARENT_SCOPE)
  elseif(SDAR_GPU_PROBE_RUN EQUAL 0)
    set(${found_var} TRUE PARENT_SCOPE)
    set(${why_var} "${probe_output}" PARENT_SCOPE)
  else()
    set(${found_var} FALSE PARENT_SCOPE)
    set(${why_var} "${probe_output}" PARENT_SCOPE)
  endif()
endfunction()
