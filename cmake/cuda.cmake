# Decides DSI_WITH_CUDA from DSI_CUDA (AUTO/ON/OFF) and sets up CUDA, cuBLAS and NCCL.
# The CUDA runtime is linked statically; cuBLAS and NCCL are opened with dlopen on first use
# (kernels/cuda/gpu_libraries.cu), so only their headers are needed here, and a dsi built with
# CUDA runs on a machine without them (or without a GPU) until a GPU path is asked for.
# NCCL has no CMake package: nccl.h is looked up beside the toolkit or under NCCL_HOME.
set(DSI_WITH_CUDA OFF)
if(NOT DSI_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS /usr/local/cuda/include ENV NCCL_HOME PATH_SUFFIXES include)
  set(_why "")
  if(NOT CMAKE_CUDA_COMPILER)
    set(_why "nvcc was not found (set CMAKE_CUDA_COMPILER)")
  elseif(NOT NCCL_INCLUDE_DIR)
    set(_why "NCCL was not found (nccl.h; set NCCL_HOME)")
  endif()
  if(_why STREQUAL "")
    set(DSI_WITH_CUDA ON)
  elseif(DSI_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DSI_CUDA=ON but ${_why}")
  else()
    message(STATUS "dsi: building without CUDA: ${_why}")
  endif()
endif()

if(DSI_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)  # 'native' fails on a machine without a GPU
  endif()
  enable_language(CUDA)
  # CMake 3.25 knows no C++20 flag for nvcc.
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION -std=c++20)
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION -std=c++20)
  set(CMAKE_CUDA_STANDARD 20)
  find_package(CUDAToolkit REQUIRED)
  file(STRINGS ${NCCL_INCLUDE_DIR}/nccl.h _nccl_ver REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*PATCH ([0-9]+).*" "\\1.\\2.\\3"
         NCCL_VERSION "${_nccl_ver}")
  string(REGEX REPLACE "\\..*" "" NCCL_VERSION_MAJOR "${NCCL_VERSION}")
  message(STATUS "dsi: CUDA ${CUDAToolkit_VERSION}, NCCL ${NCCL_VERSION} headers (${NCCL_INCLUDE_DIR})")
  add_library(dsi::nccl INTERFACE IMPORTED)
  set_target_properties(dsi::nccl PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
endif()
