/* rebalancerd lab: a 512-byte boot sector that keeps dirtying guest RAM.
 *
 * Built at lab-up time with binutils:
 *   as --32 -o dirty.o dirty.S [--defsym DIRTY_MIB=64]
 *   ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o dirty.bin dirty.o
 *
 * SeaBIOS loads it at 0:7c00 in real mode. It enables A20, switches to "unreal" mode (real mode
 * with a 4 GiB data-segment limit) and then loops forever, incrementing one dword in every 4 KiB
 * page from 1 MiB up to 1 MiB + DIRTY_MIB: each pass dirties DIRTY_MIB of RAM, as fast as the
 * vCPU can run. Pre-copy cannot converge when DIRTY_MIB exceeds what the migration bandwidth
 * sends within the allowed downtime.
 */
        .code16
        .globl  _start
        .ifndef DIRTY_MIB
        .set    DIRTY_MIB, 64
        .endif
        .set    START, 0x100000
        .set    END, START + DIRTY_MIB * 0x100000

_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movw    $0x7c00, %sp
        inb     $0x92, %al              /* fast A20 gate */
        orb     $2, %al
        andb    $0xfe, %al
        outb    %al, $0x92
        lgdt    gdt_desc
        movl    %cr0, %eax
        orb     $1, %al
        movl    %eax, %cr0              /* protected mode, just to load a 4 GiB limit into %ds */
        jmp     1f
1:      movw    $0x08, %bx
        movw    %bx, %ds
        andb    $0xfe, %al
        movl    %eax, %cr0              /* back to real mode: %ds keeps its 4 GiB limit */
        jmp     2f
2:      xorw    %ax, %ax
        movw    %ax, %ds
pass:   movl    $START, %edi
page:   addr32 incl (%edi)
        addl    $0x1000, %edi
        cmpl    $END, %edi
        jb      page
        jmp     pass

        .p2align 3
gdt:    .quad   0
        .quad   0x00cf92000000ffff      /* data, base 0, limit 4 GiB, writable */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

        .org    510
        .word   0xaa55
