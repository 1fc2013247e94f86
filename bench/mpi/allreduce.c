/* MPI's own all-reduce figure: MPI_Allreduce (float sum) over MPI_COMM_WORLD for sizes given on the
 * command line in bytes; prints one line per size: "<bytes> <seconds per call, max over ranks>". */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  for (int a = 1; a + 1 < argc; a += 2) {
    long bytes = atol(argv[a]);
    int iters = atoi(argv[a + 1]);
    long n = bytes / 4;
    float *x = malloc(bytes), *y = malloc(bytes);
    for (long i = 0; i < n; i++) x[i] = (float)(rank + i % 7);
    MPI_Allreduce(x, y, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* warm-up */
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) MPI_Allreduce(x, y, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t = (MPI_Wtime() - t0) / iters, tmax;
    MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("%ld %.9f\n", bytes, tmax);
    free(x);
    free(y);
  }
  MPI_Finalize();
  return 0;
}
