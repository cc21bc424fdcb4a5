/* KVM usability probe, embedded as bytes in harness/accel.py
   (tests/unit/test_accel.py reassembles it and compares).

   A multiboot (a.out kludge) flat binary loaded at 1 MiB. QEMU's multiboot
   ROM enters it in 32-bit protected mode. It writes progress letters to the
   debug console (port 0x402):
     P  protected mode reached
     L  long mode reached (identity map of 1 GiB in 2 MiB pages)
     M  one write into every 2 MiB page from 4 MiB up to 1 GiB
     W  a 64 MiB memset (rep stosq)
     B  a 4 Mi-iteration read-modify-write byte loop (what a kernel
        decompressor does; a broken paravirtual KVM that still runs
        firmware crawls here)
     OK newline, then halt.
   Build: as --32 -o p.o kvm_probe.S && ld -m elf_i386 -Ttext=0x100000 --oformat binary -o p.bin p.o */
    .code32
    .set BASE, 0x100000
    .globl _start
_start:
    .long 0x1BADB002                  /* magic */
    .long 0x00010000                  /* flags: address fields valid */
    .long -(0x1BADB002 + 0x00010000)  /* checksum */
    .long BASE                        /* header_addr */
    .long BASE                        /* load_addr */
    .long 0                           /* load_end_addr: whole file */
    .long 0                           /* bss_end_addr: none */
    .long BASE + (entry - _start)     /* entry_addr */
entry:
    mov $0x402, %dx
    mov $'P', %al
    out %al, %dx
    /* page tables at 0x200000 (PML4), 0x201000 (PDPT), 0x202000 (PD) */
    mov $0x200000, %edi
    xor %eax, %eax
    mov $(3 * 4096 / 4), %ecx
    rep stosl
    movl $0x201003, 0x200000
    movl $0x202003, 0x201000
    mov $0x202000, %edi
    mov $0x83, %eax                   /* present | rw | 2 MiB page */
    mov $512, %ecx
2:  movl %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b
    mov $0x200000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                    /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx             /* EFER */
    rdmsr
    or $0x100, %eax                   /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax              /* PG | PE */
    mov %eax, %cr0
    lgdt BASE + (gdtr - _start)
    ljmp $0x08, $(BASE + (long64 - _start))
    .code64
long64:
    mov $0x402, %dx
    mov $'L', %al
    out %al, %dx
    mov $0x400000, %rdi
3:  movq %rdi, (%rdi)
    add $0x200000, %rdi
    cmp $0x3fe00000, %rdi
    jb 3b
    mov $0x402, %dx
    mov $'M', %al
    out %al, %dx
    mov $0x400000, %rdi
    mov $(64*1024*1024/8), %rcx
    xor %rax, %rax
    rep stosq
    mov $'W', %al
    out %al, %dx
    mov $0x400000, %rdi
    mov $(4*1024*1024), %rcx
4:  addb $1, (%rdi)
    inc %rdi
    loop 4b
    mov $'B', %al
    out %al, %dx
    mov $'O', %al
    out %al, %dx
    mov $'K', %al
    out %al, %dx
    mov $'\n', %al
    out %al, %dx
1:  hlt
    jmp 1b
    .align 8
gdt:
    .quad 0
    .quad 0x00209A0000000000          /* 64-bit code segment */
gdtr:
    .word gdtr - gdt - 1
    .long BASE + (gdt - _start)
